import ctypes
import json
import os
import sqlite3
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from tunelab import fsutil
from tunelab.cli import app
from tunelab.cli.common import friendly
from tunelab.ledger import store as ledger

runner = CliRunner()


# `tunelab --help` (panels, order, one line per command): tests/unit/test_cli_help.py


def _one_error_line(res, *words: str) -> str:
    """The failure was handled: exit 1, no traceback, exactly one line on stderr holding every word."""
    assert isinstance(res.exception, SystemExit) and res.exit_code == 1, res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_a_locked_ledger_is_one_line_naming_it(write_spec, monkeypatch):
    from tunelab.scaffold.write import scaffold

    scaffold(spec := write_spec())
    exp = spec.parent
    ledger.query(exp, "SELECT 1")
    monkeypatch.setattr(fsutil, "SQLITE_TIMEOUT_S", 0.2, raising=False)
    holder = sqlite3.connect(exp / "tunelab.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another tunelab mid-write: a real lock, held until rollback
    try:
        res = runner.invoke(app, ["results", str(exp)])
    finally:
        holder.rollback()
        holder.close()
    _one_error_line(res, str(exp / "tunelab.db"), "locked")


def test_writing_under_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file, not a directory")
    res = runner.invoke(app, ["data", "capitalization", "--word-len", "5", "--num-words", "10",
                              "--out", str(tmp_path / "taken" / "data")])
    _one_error_line(res, str(tmp_path / "taken"), "not a directory")


def _drop_root_file_override() -> None:
    """In the child before exec: without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, root obeys file modes."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_permission_denied_is_one_line_naming_the_file(tmp_path):
    """A real EACCES from the kernel on a read-only directory. Tests run as root here, and root ignores file
    modes, so the CLI process runs without the two capabilities that let it (it stays root otherwise)."""
    out = tmp_path / "read-only"
    out.mkdir(mode=0o555)
    drop = _drop_root_file_override if os.geteuid() == 0 else None
    try:
        proc = subprocess.run([sys.executable, "-m", "tunelab", "data", "capitalization", "--word-len", "5",
                               "--num-words", "10", "--out", str(out)], capture_output=True, text=True,
                              preexec_fn=drop, timeout=120)
    except subprocess.SubprocessError as exc:  # a container without CAP_SETPCAP cannot drop them
        pytest.skip(f"cannot run a process that obeys file modes here: {exc}")
    finally:
        out.chmod(0o755)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "permission denied" in lines[0] and f"{out}/words_5L_80P_10.json" in lines[0]


def test_a_scheduler_command_timing_out_is_one_line(capsys):
    @friendly
    def status():  # what `squeue` stuck on a slurmctld that does not answer looks like
        subprocess.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.2)

    with pytest.raises(typer.Exit) as exc:
        status()
    assert exc.value.exit_code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "did not answer within 0.2 s" in lines[0] and "time.sleep" in lines[0]


def test_a_full_disk_is_one_line(capsys):
    """/dev/full: the kernel answers every write with ENOSPC, exactly as a full disk mid-checkpoint does."""
    @friendly
    def save():
        with open("/dev/full", "w") as fh:
            fh.write("x" * 100_000)

    with pytest.raises(typer.Exit):
        save()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no space left on device" in lines[0]


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


def test_plan_warning_keeps_its_square_brackets(write_spec):
    """rich reads [..] as markup: a warning naming a list must reach the terminal whole."""
    from typer.testing import CliRunner

    from tunelab.cli import app

    res = CliRunner().invoke(app, ["plan", str(write_spec(training={"modules_to_save": []})), "--no-md"])
    assert res.exit_code == 0, res.output
    assert "addmodules_to_save:[embed_tokens,lm_head]" in "".join(res.output.split())
