"""training.levers: auto — the micro-batch × accumulation split holds the effective batch exactly, gradient
checkpointing turns on exactly where the simulator says no split fits without it, fields the spec sets win, and
the choices reach run.yaml. Expectations are computed here from the simulator (estimate/peak.py) directly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.catalog import GPU
from tunelab.errors import TunelabError
from tunelab.estimate.batch import SAFETY_FRACTION
from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import predict_peak, step_shape
from tunelab.forecast.levers import explicit_fields, levers_on
from tunelab.forecast.split import Costs, choose_split, divisors, target_effective_batch
from tunelab.ledger import history
from tunelab.plan.planner import make_plan, measure_lengths
from tunelab.rundir.estimate import LeverSource
from tunelab.spec import TrainingConfig


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


@pytest.fixture
def write_spec(tmp_path, spec_in):
    """write_spec(training=..., **top) -> experiment.yaml: the suite's tiny spec with no factors and no micro-batch
    of its own (so a lever may choose it), the training fields given set."""
    import yaml

    def write(training: dict | None = None, **top) -> Path:
        path = spec_in(tmp_path / "exp", **top)
        spec = yaml.safe_load(path.read_text())
        spec["factors"] = top.get("factors", {})
        spec["training"] = {k: v for k, v in spec["training"].items() if k != "batch_size"} | (training or {})
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


def _run(write_spec, **training):
    plan = make_plan(write_spec(training=training), estimates=False)
    return plan.spec, plan.finetune_runs[0]


def _probed_row(fixed_s: float, per_token_s: float, **kw) -> history.HistoryRun:
    """A probed CPU row of the tiny model: per micro-batch fixed cost + per-token cost (as the probe records)."""
    import torch

    base = dict(key=f"probe:{fixed_s}", source="probe", model="tiny", device="cpu",
                cpu_threads=torch.get_num_threads(), packed=False, batch_size=8, gradient_accumulation_steps=1,
                max_seq_len=64, lora_rank=8, tokens_per_step=216.0, tokens_per_s=216 / (fixed_s + 216 * per_token_s),
                per_token_s=per_token_s, step_fixed_s=fixed_s, steps=2, origin="probed",
                gradient_checkpointing=False, lora_targets="all-linear")
    return history.HistoryRun(**{**base, **kw})


def _arch_fields(tiny_model) -> dict:
    from tunelab.catalog import resolve_architecture

    a = resolve_architecture(tiny_model)
    return dict(layers=a.layers, hidden=a.hidden, parameters=a.parameters)


@pytest.mark.parametrize("effective", [1, 2, 6, 12, 16, 40, 64])
@pytest.mark.parametrize("fixed_s", [0.0, 0.05])
def test_the_split_holds_the_effective_batch_exactly(write_spec, tiny_model, effective, fixed_s):
    spec, cfg = _run(write_spec, effective_batch=effective)
    rows = [_probed_row(fixed_s, 2e-5, **_arch_fields(tiny_model))]
    target = target_effective_batch(cfg.training, 1, explicit_fields(spec, cfg), spec_path := cfg.run_dir, cfg.name)
    assert target == effective and spec_path
    chosen, choices = choose_split(cfg, Costs(None, rows, measure_lengths), target, explicit_fields(spec, cfg))
    t = chosen.training
    assert t.batch_size * t.gradient_accumulation_steps == effective
    assert t.batch_size in divisors(effective)
    split = next(c for c in choices if c.lever == "micro_batch_split")
    assert split.value == f"{t.batch_size} × {t.gradient_accumulation_steps} × 1" and split.applied
    assert split.source == LeverSource.PROBED  # priced by the probed fixed + per-token costs


def test_a_large_fixed_step_cost_chooses_the_fewest_micro_batches(write_spec, tiny_model):
    """With the fixed part paid per micro-batch, 16 × 1 beats 1 × 16 by 15 fixed parts per step: the lever takes
    the largest micro-batch and says how much it saves against the spec's 1 × 16."""
    spec, cfg = _run(write_spec, effective_batch=16, batch_size=1)
    rows = [_probed_row(0.5, 1e-6, **_arch_fields(tiny_model))]
    explicit = explicit_fields(spec, cfg) - {"batch_size"}  # as if only the effective batch were given
    chosen, choices = choose_split(cfg, Costs(None, rows, measure_lengths), 16, explicit)
    assert (chosen.training.batch_size, chosen.training.gradient_accumulation_steps) == (16, 1)
    split = choices[0]
    steps = -(-320 // 16)  # 320 train rows, 16 per step
    assert split.seconds_delta is not None and split.seconds_delta == pytest.approx(-steps * 15 * 0.5, rel=0.05)


def test_fields_the_spec_sets_win(write_spec, tiny_model):
    spec, cfg = _run(write_spec, batch_size=1, gradient_accumulation_steps=16, gradient_checkpointing=True,
                     levers="auto")
    explicit = explicit_fields(spec, cfg)
    assert {"batch_size", "gradient_accumulation_steps", "gradient_checkpointing"} <= explicit
    chosen, choices = choose_split(cfg, Costs(None, [], measure_lengths), 16, explicit)
    t = chosen.training
    assert (t.batch_size, t.gradient_accumulation_steps, t.gradient_checkpointing) == (1, 16, True)
    assert [c.source for c in choices] == [LeverSource.SPEC, LeverSource.SPEC]


def test_an_effective_batch_that_does_not_split_names_the_file_and_field(write_spec):
    spec, cfg = _run(write_spec, effective_batch=6)
    with pytest.raises(TunelabError) as err:
        target_effective_batch(cfg.training, 4, explicit_fields(spec, cfg), spec_path := cfg.run_dir, cfg.name)
    assert "training.effective_batch" in str(err.value) and str(spec_path) in str(err.value)
    # given beside both split fields, it must be their product
    with pytest.raises(TunelabError, match="training.effective_batch"):
        make_plan(write_spec(training={"effective_batch": 12, "batch_size": 4, "gradient_accumulation_steps": 4}),
                  estimates=False)


def test_levers_default_to_auto_with_a_deadline_only():
    assert levers_on(TrainingConfig(), 3600.0) and not levers_on(TrainingConfig(), None)
    assert levers_on(TrainingConfig(levers="auto"), None) and not levers_on(TrainingConfig(levers="off"), 3600.0)


def _peak(model, training: TrainingConfig, micro: int, accum: int, gc: bool, longest: int) -> float:
    """The simulator's requirement for this split, written out here (not through the levers)."""
    t = training.model_copy(update={"batch_size": micro, "gradient_accumulation_steps": accum,
                                    "gradient_checkpointing": gc})
    inputs = MemoryInputs.of_training(t, "bfloat16")
    return predict_peak(model, inputs, step_shape(micro, t.max_seq_len, t.packing, longest)).required_gib


def _gpu(memory_gib: float) -> GPU:
    return GPU("Test-GPU", memory_gib * 1024, 100.0, 1000.0, (9, 0))


def test_checkpointing_turns_on_exactly_when_no_split_fits_without_it(write_spec, tiny_model):
    spec, cfg = _run(write_spec, effective_batch=16, max_seq_len=1024, packing=True)  # rows of 1024 tokens
    longest = max(measure_lengths(cfg)[0])
    off = {m: _peak(tiny_model, cfg.training, m, 16 // m, False, longest) for m in divisors(16)}
    on = {m: _peak(tiny_model, cfg.training, m, 16 // m, True, longest) for m in divisors(16)}
    assert on[16] < off[16] and off[1] < off[16]  # the tiny model's activations still show
    assert on[1] < off[1]  # so a budget between them needs checkpointing
    seen = set()
    for budget in [(off[1] + off[16]) / 2, (on[1] + off[1]) / 2, off[16] + 1.0]:
        gpu = _gpu(budget / SAFETY_FRACTION)
        fit_off = [m for m in divisors(16) if off[m] <= budget]
        fit_on = [m for m in divisors(16) if on[m] <= budget]
        expected = (max(fit_off), False) if fit_off else (max(fit_on), True)
        chosen, choices = choose_split(cfg, Costs(gpu, [], measure_lengths), 16, explicit_fields(spec, cfg))
        t = chosen.training
        assert (t.batch_size, t.gradient_checkpointing) == expected, budget
        assert t.batch_size * t.gradient_accumulation_steps == 16
        gc = choices[1]
        assert gc.lever == "gradient_checkpointing" and gc.source == LeverSource.SIMULATED
        assert gc.value.startswith("on" if expected[1] else "off")
        assert choices[0].peak_memory_gib == pytest.approx((on if expected[1] else off)[expected[0]], abs=0.01)
        seen.add(expected)
    assert (16, False) in seen and any(gc for _, gc in seen) and any(m < 16 for m, gc in seen if not gc)


def test_the_levers_reach_run_yaml(write_spec, tiny_model):
    """scaffold writes the runs as the levers set them: the job reads run.yaml alone."""
    from tunelab.rundir.config import load_run_config
    from tunelab.scaffold.write import scaffold

    history.record([_probed_row(0.5, 1e-6, **_arch_fields(tiny_model))])
    spec = write_spec(training={"effective_batch": 16, "checkpoint_every": 3}, resources={"deadline": "2h"})
    scaffold(spec)
    cfg = load_run_config(spec.parent / "runs" / "tiny")
    t = cfg.training
    assert (t.batch_size, t.gradient_accumulation_steps) == (16, 1) and t.gradient_checkpointing is False
    assert t.checkpoint_every == 3  # set in the spec: kept
    levers = {c.lever: c for c in cfg.estimate.levers}
    assert levers["checkpoint_every"].source == LeverSource.SPEC
    assert levers["micro_batch_split"].value == "16 × 1 × 1" and levers["micro_batch_split"].applied
    assert cfg.estimate.micro_batch == 16 and cfg.estimate.effective_batch == 16
