import json

from typer.testing import CliRunner

from tunelab.cli import app

runner = CliRunner()


def test_help_lists_the_pipeline():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("demo", "data", "models", "plan", "scaffold", "run", "train", "eval", "results", "report"):
        assert cmd in res.output


def test_data_capitalization_cli(tmp_path):
    res = runner.invoke(app, ["data", "capitalization", "--word-len", "7", "--num-words", "50", "--seed", "1",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "words_7L_80P_50.json").read_text())
    assert len(data["train"]) == 40 and data["train"][0]["output"] == data["train"][0]["input"].capitalize()


def test_data_capitalization_too_many_words(tmp_path):
    res = runner.invoke(app, ["data", "capitalization", "--word-len", "1", "--num-words", "1000", "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert "--num-words: only 26 distinct 1-letter words" in res.stderr


def test_models_tiny_cli(tmp_path):
    res = runner.invoke(app, ["models", "tiny", "--layers", "1", "--hidden", "64", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "model.safetensors").is_file()
    bad = runner.invoke(app, ["models", "tiny", "--hidden", "100", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--hidden: must be a multiple of 32" in bad.stderr


def test_run_on_missing_dir_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "experiment directory not found" in res.stderr
    res = runner.invoke(app, ["results", str(tmp_path)])
    assert res.exit_code == 1 and "no runs here" in res.stderr


def test_schema_is_json():
    res = runner.invoke(app, ["schema"])
    schema = json.loads(res.stdout)
    assert "training" in schema["properties"] and schema["additionalProperties"] is False
