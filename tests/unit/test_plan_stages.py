"""plan / scaffold / validate of staged runs: every stage's dataset checked (errors naming the stage), steps and
time summed over the stages, memory the worst stage's, the SLURM limit covering all stages, plan.md's stages."""

import json
import math
import re

import pytest

from tunelab.catalog import resolve_gpu
from tunelab.errors import TunelabError
from tunelab.forecast.runs import slurm_time_limit
from tunelab.ledger import history
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import make_plan


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch, quiet_planning):
    """Its own empty history; the plans priced as on an idle machine (conftest's quiet_planning), so that a stage
    and the same run planned alone see the same threads and load."""
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


@pytest.fixture
def hard_dataset(tmp_path):
    """A second dataset (train + test lists) with a curriculum field, longer examples than caps."""
    def row(i):
        return {"input": "word " * (1 + i % 5) + f"n{i}", "output": f"WORD N{i}", "difficulty": i % 3}

    path = tmp_path / "hard.json"
    path.write_text(json.dumps({"train": [row(i) for i in range(45)], "test": [row(i) for i in range(45, 55)]}))
    return path


def _staged(write_spec, hard_dataset, caps_dataset, **overrides):
    spec = dict(
        datasets=[{"name": "caps", "path": str(caps_dataset)}, {"name": "hard", "path": str(hard_dataset)}],
        stages=[{"name": "easy", "dataset": "caps", "epochs": 2},
                {"name": "hard", "dataset": "hard", "batch_size": 4, "gradient_accumulation_steps": 3,
                 "order": {"by_field": "difficulty"}, "learning_rate": 0.001, "optimizer": "carried"}])
    spec.update(overrides)
    return write_spec(**spec)


def _train_rows(path) -> int:
    return len(json.loads(path.read_text())["train"])


def _record_history(tiny_model, tokens_per_s: float) -> None:
    import torch

    from tunelab.catalog import resolve_architecture

    arch = resolve_architecture(tiny_model)
    history.record([history.HistoryRun(
        key="a", source="tunelab", model="tiny", layers=2, hidden=128, parameters=arch.parameters, device="cpu",
        cpu_threads=torch.get_num_threads(), packed=False, batch_size=8, gradient_accumulation_steps=1,
        max_seq_len=64, lora_rank=8, tokens_per_step=216.0, tokens_per_s=tokens_per_s, steps=40, duration_s=20.0,
        train_time_s=10.0, overhead_s=1.0, startup_s=6.0)])


def test_staged_steps_are_the_sum_over_stages_each_on_its_own_data(write_spec, hard_dataset, caps_dataset):
    plan = make_plan(_staged(write_spec, hard_dataset, caps_dataset))
    run = plan.finetune_runs[0]
    assert run.dataset.name == "hard"  # the last dataset a stage names: the run is evaluated on it
    easy = math.ceil(_train_rows(caps_dataset) / 8) * 2  # batch 8, no accumulation, 2 epochs
    hard = math.ceil(math.ceil(_train_rows(hard_dataset) / 4) / 3) * 1  # batch 4 × accumulation 3, 1 epoch
    e = plan.estimates[run.name]
    assert [(s.name, s.dataset, s.steps) for s in e.stages] == [("easy", "caps", easy), ("hard", "hard", hard)]
    assert e.steps == easy + hard == 80 + 4
    assert e.train_tokens == sum(s.train_tokens for s in e.stages)
    # the stage only a stage trains on was verified and its rows counted, like a run's dataset
    assert plan.datasets["caps"].counts["train"] == _train_rows(caps_dataset)


def test_staged_time_is_the_sum_and_the_slurm_limit_covers_every_stage(write_spec, hard_dataset, caps_dataset,
                                                                         tiny_model):
    from tunelab.rundir.config import load_run_config
    from tunelab.scaffold.write import scaffold

    _record_history(tiny_model, tokens_per_s=20.0)
    spec = _staged(write_spec, hard_dataset, caps_dataset, resources={"executor": "slurm"})
    scaffold(spec)
    cfg = load_run_config(spec.parent / "runs" / "tiny_r4")
    est = cfg.estimate
    # each stage is estimated as the run it trains: a plain spec with the stage's dataset and training agrees
    alone = make_plan(write_spec(datasets=[{"name": "hard", "path": str(hard_dataset)}],
                                 training={"batch_size": 4, "gradient_accumulation_steps": 3, "learning_rate": 0.001,
                                           "order": {"by_field": "difficulty"}})).estimates["tiny_r4"]
    assert est is not None
    assert (est.stages[1].steps, est.stages[1].seconds) == (alone.steps, alone.seconds)
    stage_s = [s.seconds or 0.0 for s in est.stages]
    assert est.seconds == pytest.approx(sum(stage_s), abs=0.11)
    assert est.slurm_time_limit == slurm_time_limit(sum(stage_s)) != slurm_time_limit(max(stage_s))
    assert f"--time={est.slurm_time_limit}" in (cfg.run_dir / "job.sbatch").read_text()


def test_memory_is_the_worst_stage(write_spec, hard_dataset, caps_dataset):
    stages = [{"name": "small", "dataset": "caps"}, {"name": "big", "dataset": "hard", "batch_size": 32}]
    plan = make_plan(_staged(write_spec, hard_dataset, caps_dataset, stages=stages), gpu=resolve_gpu("H100"))
    e = plan.estimates["tiny_r4"]
    small, big = e.stages
    assert big.tokens_per_microbatch > small.tokens_per_microbatch and big.peak_memory_gib > small.peak_memory_gib
    assert (e.peak_memory_gib, e.micro_batch, e.tokens_per_microbatch) == (big.peak_memory_gib, 32,
                                                                           big.tokens_per_microbatch)
    assert "stage big" in e.memory_source


def test_a_stage_ordering_by_a_missing_field_is_refused_naming_the_stage(write_spec, hard_dataset, caps_dataset):
    stages = [{"name": "easy", "dataset": "hard"},
              {"name": "curriculum", "dataset": "caps", "order": {"by_field": "difficulty"}}]
    with pytest.raises(TunelabError) as err:
        make_plan(_staged(write_spec, hard_dataset, caps_dataset, stages=stages))
    assert err.value.field == "stages[1].order.by_field"
    assert "stage 'curriculum'" in err.value.message and "no field 'difficulty'" in err.value.message


def test_a_dataset_only_a_stage_trains_on_is_checked_naming_the_stage(write_spec, hard_dataset, caps_dataset,
                                                                       tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x", "answer": "y"}) + "\n")
    datasets = [{"name": "caps", "path": str(caps_dataset)}, {"name": "bad", "path": str(bad)}]
    spec = write_spec(datasets=datasets, stages=[{"name": "warmup", "dataset": "bad"}, {"name": "main"}])
    with pytest.raises(TunelabError) as err:
        make_plan(spec)
    assert err.value.field == "stages[0].dataset"
    assert "stage 'warmup' trains on dataset 'bad'" in err.value.message and "input" in err.value.message


def test_plan_md_and_json_list_the_stages(write_spec, hard_dataset, caps_dataset):
    from typer.testing import CliRunner

    from tunelab.cli import app

    spec = _staged(write_spec, hard_dataset, caps_dataset)
    md = render_plan_md(make_plan(spec))
    assert "## Stages" in md
    # the stage's time: a CPU with nothing measured times the shape itself (forecast/cpuspeed.py)
    assert re.search(r"\| tiny_r4 \| 1\. easy \| caps \| 2 \| 80 \| shuffled \| 0\.002 \| fresh \| 8×1 \| [\d.]+ (s|min) \|", md)
    assert re.search(r"\| tiny_r4 \| 2\. hard \| hard \| 1 \| 4 \| by_field: difficulty \| 0\.001 \| carried \| 4×3 "
                     r"\| [\d.]+ (s|min) \|", md)
    assert "| **tiny_r4** | **total** |  |  | **84** |" in md
    assert "| tiny_r4 | fine-tuned | tiny | hard | lora_rank=4 | easy→hard | 8×1→4×3 | off | sdpa | 84 |" in md
    assert "| caps | fields | 320 |" in md and "training (stage easy) |" in md
    res = CliRunner().invoke(app, ["plan", str(spec), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [(r["run"], r["stage"], r["steps"]) for r in out["stages"][:3]] == [
        ("tiny_r4", "1. easy", "80"), ("tiny_r4", "2. hard", "4"), ("tiny_r4", "total", "84")]
    assert [s["steps"] for s in out["estimates"]["tiny_r4"]["stages"]] == [80, 4]


def test_truncation_and_validate_check_each_stage_at_its_own_limits(write_spec, hard_dataset, caps_dataset):
    from tunelab.plan.validate import validate_path

    stages = [{"name": "short", "dataset": "caps", "max_seq_len": 16},
              {"name": "hard", "dataset": "hard", "warmup_steps": 10}]  # 12 steps in all, 2 of them in this stage
    spec = _staged(write_spec, hard_dataset, caps_dataset, stages=stages, training={"batch_size": 32})
    plan = make_plan(spec)
    assert any(w.startswith("tiny_r4 (stage short): ") and "longer than max_seq_len" for w in plan.warnings)
    assert not any("(stage hard)" in w for w in plan.warnings)
    check = next(c for c in validate_path(spec, resolve_gpu("H100")) if c.run == "tiny_r4")
    assert check.steps == plan.estimates["tiny_r4"].steps == 10 + 2
    assert any(m.startswith("tiny_r4 (stage short): ") and "max_seq_len 16" in m for m in check.errors)
    assert any(m.startswith("tiny_r4 (stage hard): warmup_steps 10 exceeds the run's 2") for m in check.errors)


def test_an_unstaged_run_ordering_by_a_missing_field_is_refused_at_plan(write_spec):
    with pytest.raises(TunelabError) as err:
        make_plan(write_spec(training={"order": {"by_field": "difficulty"}}))
    assert err.value.field == "training.order.by_field"
    assert "dataset 'caps'" in err.value.message and "no field 'difficulty' (fields: input, output)" in err.value.message
