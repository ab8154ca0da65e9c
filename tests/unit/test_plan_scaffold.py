import json

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.plan.planner import make_plan
from tunelab.rundir.config import load_run_config
from tunelab.scaffold.write import scaffold

runner = CliRunner()


def test_plan_verifies_and_lists_runs(write_spec):
    plan = make_plan(write_spec())
    assert [r.name for r in plan.runs] == ["tiny_r4", "tiny_r8", "tiny_base"]
    assert plan.datasets["caps"].counts == {"train": 320, "validation": 40, "test": 40}
    assert plan.datasets["caps"].format == "fields" and plan.datasets["caps"].files[0].rows == 400
    assert plan.models["tiny"].model_type == "llama"
    assert plan.recipe.startswith("single process")


def test_plan_cli_writes_plan_md_and_json(write_spec):
    spec = write_spec()
    res = runner.invoke(app, ["plan", str(spec), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [r["type"] for r in data["runs"]] == ["fine-tuned", "fine-tuned", "control"]
    assert not (spec.parent / "plan.md").exists()  # --json writes plan.md only when asked (--md)
    assert runner.invoke(app, ["plan", str(spec), "--json", "--md"]).exit_code == 0
    md = (spec.parent / "plan.md").read_text()
    assert "| tiny_r4 | fine-tuned | tiny | caps | lora_rank=4 |" in md and "## Estimates" in md


def test_plan_states_the_smallest_resolvable_difference(write_spec):
    from scipy.optimize import brentq
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    spec = write_spec()
    res = runner.invoke(app, ["plan", str(spec)])
    assert res.exit_code == 0, res.output
    unpaired = brentq(lambda d: NormalIndPower().power(proportion_effectsize(0.5 + d, 0.5), nobs1=40, alpha=0.05)
                      - 0.8, 0.01, 0.49)
    text = "exact_match on caps / test, 40 test samples: differences in accuracy under ~"
    md = (spec.parent / "plan.md").read_text()
    line = next(line for line in md.splitlines() if text in line)
    assert f"~{100 * unpaired:.0f} pp unpaired at 50% accuracy); alpha 0.05, power 0.8" in line
    assert "paired on the same samples, assuming 20% of them change answer" in line
    assert "resolution: " + text in " ".join(res.output.split())


def test_scaffold_writes_self_contained_runs(write_spec):
    spec = write_spec()
    plan = scaffold(spec)
    exp = spec.parent
    for name in ("tiny_r4", "tiny_r8"):
        cfg = load_run_config(exp / "runs" / name / "run.yaml")
        assert cfg.kind == "finetune" and cfg.training.lora_rank == int(name[-1])
        assert cfg.model.path.startswith("/") and cfg.dataset.path.startswith("/")
        job = (exp / "runs" / name / "job.sh").read_text()
        assert "-m tunelab.train.job run.yaml" in job
    assert load_run_config(exp / "controls" / "tiny_base").training is None
    assert "runs/tiny_r8/job.sh" in (exp / "submit_all.sh").read_text()
    assert (exp / "README.md").is_file() and (exp / "plan.md").is_file()
    # idempotent: scaffolding again changes nothing
    before = (exp / "runs" / "tiny_r4" / "run.yaml").read_text()
    scaffold(spec)
    assert (exp / "runs" / "tiny_r4" / "run.yaml").read_text() == before
    assert len(plan.runs) == 3


def test_scaffold_out_dir_copies_spec_with_absolute_paths(write_spec, tmp_path):
    spec = write_spec()
    scaffold(spec, tmp_path / "elsewhere")
    copy = yaml.safe_load((tmp_path / "elsewhere" / "experiment.yaml").read_text())
    assert copy["models"][0]["path"].startswith("/")
    assert (tmp_path / "elsewhere" / "runs" / "tiny_r4" / "run.yaml").is_file()


def test_scaffold_refuses_to_change_a_run_with_results(write_spec):
    spec = write_spec()
    scaffold(spec)
    (spec.parent / "runs" / "tiny_r4" / "status.json").write_text('{"state": "completed"}')
    spec2 = write_spec(training={"epochs": 2})
    with pytest.raises(TunelabError, match="already has results"):
        scaffold(spec2)
    scaffold(spec2, force=True)


def test_scaffolding_again_keeps_a_retried_run_yaml_and_force_rewrites_it(write_spec):
    """A retry halved tiny_r4's micro-batch (attempt 2) and the run has results: scaffolding the same spec again
    keeps that run.yaml as it is (the next job must not OOM again) and writes the rest; --force rewrites it."""
    spec = write_spec()
    scaffold(spec)
    run = spec.parent / "runs" / "tiny_r4"
    retried = yaml.safe_load((run / "run.yaml").read_text())
    retried["attempt"] = 2
    retried["training"]["batch_size"] //= 2
    retried["training"]["gradient_accumulation_steps"] *= 2
    (run / "run.yaml").write_text(text := yaml.safe_dump(retried, sort_keys=False))
    (run / "status.json").write_text('{"state": "failed"}')
    (run / "job.sh").unlink()
    again = scaffold(spec)
    assert (run / "run.yaml").read_text() == text and (run / "job.sh").is_file()
    assert [(c.name, c.attempt) for c in again.runs] == [("tiny_r4", 2), ("tiny_r8", 1), ("tiny_base", 1)]
    scaffold(spec, force=True)
    assert load_run_config(run).attempt == 1


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        ({"models": [{"name": "tiny", "path": "/does/not/exist"}]}, "models[0].path", "model directory not found"),
        ({"training": {"lora_rank": "x"}}, "training.lora_rank", "valid integer"),
        ({"prompt": "no placeholder"}, "prompt", "at least one field"),
        ({"prompt": "{input} {other}"}, "datasets[0]", "no column(s) other"),
        ({"bogus": 1}, "bogus", "unknown key"),
    ],
)
def test_bad_input_one_message_nonzero_exit_nothing_written(write_spec, overrides, field, words):
    spec = write_spec(**overrides)
    for cmd in ("plan", "scaffold"):
        res = runner.invoke(app, [cmd, str(spec)])
        assert res.exit_code == 1
        assert f"{spec}: {field}: " in res.stderr.replace("\n", " ") or f"{spec}: {field}: " in res.stderr, res.stderr
        assert words in res.stderr
        assert "Traceback" not in res.output
    assert sorted(p.name for p in spec.parent.iterdir()) == ["experiment.yaml"]


def test_dataset_without_test_split(write_spec, tmp_path):
    bad = tmp_path / "nosplit.json"
    bad.write_text(json.dumps({"train": [{"input": "a", "output": "A"}], "validation": [{"input": "b", "output": "B"}]}))
    spec = write_spec(datasets=[{"name": "caps", "path": str(bad)}])
    res = runner.invoke(app, ["scaffold", str(spec)])
    assert res.exit_code == 1
    assert "datasets[0]" in res.stderr and "has no 'test' split" in res.stderr and "split: {test: 0.1}" in res.stderr
    assert not (spec.parent / "runs").exists()


@pytest.mark.parametrize("source, words", [
    ("import not_a_module_anywhere\n", "not_a_module_anywhere"),
    ("from inspect_ai import Task\n\ndef helper():\n    return 1\n", "no @task"),
])
def test_a_broken_task_file_stops_scaffold_naming_the_file(write_spec, tmp_path, source, words):
    task_file = tmp_path / "my_task.py"
    task_file.write_text(source)
    spec = write_spec(eval={"tasks": [{"name": "mine", "file": str(task_file)}]})
    res = runner.invoke(app, ["scaffold", str(spec)])
    assert res.exit_code == 1 and str(task_file) in res.stderr and words in res.stderr, res.stderr
    assert "Traceback" not in res.output and not (spec.parent / "runs").exists()


def test_chat_jsonl_split_by_the_spec_plans_with_provenance(write_spec, tmp_path, caps_dataset):
    import hashlib

    rows = json.loads(caps_dataset.read_text())["train"]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["input"]},
                                                     {"role": "assistant", "content": r["output"]}]}) + "\n"
                            for r in rows))
    spec = write_spec(datasets=[{"name": "chat", "path": str(chat), "split": {"validation": 0.25, "test": 0.25}}],
                      prompt=None)
    plan = scaffold(spec)
    assert plan.datasets["chat"].counts == {"train": 160, "validation": 80, "test": 80}
    assert plan.datasets["chat"].format == "chat"
    md = (spec.parent / "plan.md").read_text()
    assert hashlib.sha256(chat.read_bytes()).hexdigest() in md and "chat.split.json" in md
    assert "| tiny_r4 | train | 160 | 0 | 0 |" in md  # truncation table: nothing cut at max_seq_len 64
    record = spec.parent / "data" / "chat.split.json"
    before = record.read_bytes()
    scaffold(spec)  # a second scaffold reads the record, never re-splits
    assert record.read_bytes() == before


def test_a_plan_failing_on_a_bad_row_records_no_split_so_the_fixed_file_plans(write_spec, tmp_path):
    """A split is recorded only once every row converted: a record left by the failed plan would refuse the
    corrected file ('changed since its split was made') and the user would have to find and delete it."""
    from tunelab.data.splits import make_split
    from tunelab.spec import SplitFractions

    def chat_rows(bad_every: int | None) -> str:
        rows = []
        for i in range(40):
            turns = [{"role": "user", "content": f"w{i}"}, {"role": "assistant", "content": f"W{i}"}]
            rows.append({"messages": turns[:1] if bad_every and i % bad_every == 0 else turns})
        return "".join(json.dumps(r) + "\n" for r in rows)

    data = tmp_path / "chat.jsonl"
    data.write_text(chat_rows(bad_every=3))  # some rows have no assistant turn
    spec = write_spec(datasets=[{"name": "chat", "path": str(data), "split": {"validation": 0.25, "test": 0.25}}],
                      prompt=None)
    with pytest.raises(TunelabError, match="no assistant turn"):
        make_plan(spec)
    record = spec.parent / "data" / "chat.split.json"
    assert not record.exists()
    data.write_text(chat_rows(bad_every=None))
    plan = make_plan(spec)
    assert plan.datasets["chat"].counts == {"train": 20, "validation": 10, "test": 10}
    assert json.loads(record.read_text())["indices"] == make_split(40, SplitFractions(validation=0.25, test=0.25))
