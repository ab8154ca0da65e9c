"""Checkpoint saves priced from what jobs measured: the median save of the history's runs of this model on this
device (summary.json `save_s`, recorded per run), else the assumption; the deadline's saves are that times the
run's mid-epoch saves, and not added where the run's time already holds the reference runs' saves (their overhead).
Every plan here prices the runs from history rows set here; nothing is timed on this machine."""

from __future__ import annotations

import pytest

from tunelab.forecast.runs import REFERENCE_OVERHEAD
from tunelab.forecast.savecost import save_cost
from tunelab.ledger import history
from tunelab.plan.planner import make_plan

FIXED_S, PER_TOKEN_S, TOKENS_PER_STEP = 0.05, 2e-4, 216.0
SAVES = (0.02, 0.5, 0.03)  # three runs' mean saves: the median is 0.03


def _not_timed(*args, **kwargs):
    raise AssertionError("the plan timed this CPU: its estimates must rest on the history rows set here")


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch):
    from tunelab.forecast import cpuspeed

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    for name in ("timed_cpu_speed", "cpu_flops", "timed_startup"):
        monkeypatch.setattr(cpuspeed, name, _not_timed)


def _arch(tiny_model) -> dict:
    from tunelab.catalog import resolve_architecture

    a = resolve_architecture(tiny_model)
    return dict(model="tiny", layers=a.layers, hidden=a.hidden, parameters=a.parameters)


def _speed_row(tiny_model, origin: str, **kw) -> history.HistoryRun:
    """The row every plan's speed rests on: the tiny model's fixed + per-token step cost on this CPU."""
    return history.HistoryRun(
        key=f"speed-{origin}", source="tunelab" if origin == "measured" else "probe", origin=origin, device="cpu",
        cpu_threads=None, packed=False, batch_size=8, gradient_accumulation_steps=1, max_seq_len=64, lora_rank=8,
        tokens_per_step=TOKENS_PER_STEP, tokens_per_s=TOKENS_PER_STEP / (FIXED_S + TOKENS_PER_STEP * PER_TOKEN_S),
        per_token_s=PER_TOKEN_S, step_fixed_s=FIXED_S, steps=40, startup_s=6.0, gradient_checkpointing=False,
        contended=False, slowdown=1.0, **_arch(tiny_model), **kw)


def _save_rows(tiny_model) -> list[history.HistoryRun]:
    """Runs that recorded their saves (and a speed without a step-cost split, which the split row outranks), and two
    that must not count."""
    rows = [history.HistoryRun(key=f"saved-{i}", source="tunelab", origin="measured", device="cpu", save_s=s,
                               tokens_per_s=1000.0, **_arch(tiny_model)) for i, s in enumerate(SAVES)]
    other_model = {**_arch(tiny_model), "layers": 99}
    rows.append(history.HistoryRun(key="other-model", source="tunelab", device="cpu", save_s=9.0,
                                   tokens_per_s=1000.0, **other_model))
    rows.append(history.HistoryRun(key="gpu", source="tunelab", device="NVIDIA H100 80GB HBM3", save_s=7.0,
                                   tokens_per_s=1000.0, **_arch(tiny_model)))
    return rows


def test_the_median_save_of_this_model_on_this_device_else_the_assumption(write_spec, tiny_model):
    cfg = make_plan(write_spec(), estimates=False).finetune_runs[0]
    assumed = save_cost(cfg, None, [])
    assert not assumed.measured and "(assumed:" in assumed.source
    measured = save_cost(cfg, None, _save_rows(tiny_model))
    assert measured.measured and measured.seconds == sorted(SAVES)[1]
    assert "measured: the median of 3 run(s) of this model on cpu" in measured.source
    assert save_cost(cfg, None, _save_rows(tiny_model)[3:]) == assumed  # another model's, a GPU's: not this one's


def _deadline_line(plan, run: str):
    assert plan.deadline is not None
    (line,) = [r for r in plan.deadline.runs if r.run == run]
    return line


def test_a_deadline_prices_mid_epoch_saves_at_the_measured_save(write_spec, tiny_model):
    """A probed speed (no overhead of its own): the run's 320 rows / 8 = 40 steps, a save every 5 steps: 8 saves
    at the median 0.03 s."""
    history.record([_speed_row(tiny_model, "probed"), *_save_rows(tiny_model)])
    plan = make_plan(write_spec(factors={"lora_rank": [4]}, training={"checkpoint_every": 5}), deadline="1d")
    est = plan.estimates["tiny_r4"]
    assert est.steps == 40 and REFERENCE_OVERHEAD not in est.time_source and not est.saves_in_time
    line = _deadline_line(plan, "tiny_r4")
    assert line.saves_s == round(40 // 5 * sorted(SAVES)[1], 1)
    assert line.saves_source.startswith("8 mid-epoch saves, save ≈ 0.03 s (measured")
    # the checkpoint lever, left to choose, prices its trade-off with the same save
    auto = make_plan(write_spec(factors={"lora_rank": [4]}), deadline="1d")
    lever = {c.lever: c for c in auto.levers["tiny_r4"]}["checkpoint_every"]
    assert lever.source == "history" and "save ≈ 0.03 s (measured: the median of 3" in lever.why


def test_saves_the_reference_runs_measured_are_not_added_twice(write_spec, tiny_model):
    """A speed from a measured run whose overhead (validation and saves) the estimate carries: the deadline's saves
    line is 0 s and says they are in the training time."""
    history.record([_speed_row(tiny_model, "measured", duration_s=12.0, train_time_s=10.0, overhead_s=1.0,
                               finish_s=0.5), *_save_rows(tiny_model)])
    plan = make_plan(write_spec(factors={"lora_rank": [4]}, training={"checkpoint_every": 5}), deadline="1d")
    assert REFERENCE_OVERHEAD in plan.estimates["tiny_r4"].time_source
    line = _deadline_line(plan, "tiny_r4")
    assert plan.estimates["tiny_r4"].saves_in_time
    assert line.saves_s == 0.0 and line.saves_source == "8 mid-epoch saves: in the training time (priced with it)"
