"""The sweep's predicted makespan has one owner (forecast/sweeptime.py `plan_forecast`, issue 54): plan.md's schedule,
the terminal's line and run.yaml's estimate.makespan_* all show the one forecast, and it is what the sweep does —
each run's training, its evaluation and both jobs' start-ups, placed on the CPU's shares
(resources.cpu_runs_at_once) — worked out here by hand from injected training estimates. Before, plan.md and the
terminal printed the training alone (planner.local_schedule) while run.yaml held the forecast."""

from __future__ import annotations

import pytest

from tunelab.cli.common import print_plan
from tunelab.forecast import sweeptime
from tunelab.forecast.evalrun import predict_run_eval
from tunelab.forecast.jobstart import VLLM_SERVER_START_S
from tunelab.forecast.ranged import recorded_estimates
from tunelab.fsutil import human_seconds
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import Plan, make_plan, split_lengths
from tunelab.rundir.estimate import RunEstimate, TimeRange

TRAIN_S = {4: 100.0, 8: 150.0}  # injected training times by LoRA rank, each with a measured 10 s start-up inside
STARTUP_S = 10.0


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


def _plan(write_spec, **overrides) -> Plan:
    """Two fine-tuned runs and their control, planned for this CPU without estimates, then given injected ones and
    the forecast the planner makes from them."""
    plan = make_plan(write_spec(**overrides), estimates=False)
    for cfg in plan.finetune_runs:
        assert cfg.training is not None
        seconds = TRAIN_S[cfg.training.lora_rank]
        plan.estimates[cfg.name] = RunEstimate(
            run=cfg.name, steps=10, seconds=seconds, startup_s=STARTUP_S, startup_kind="measured",
            time_kind="measured", time_range=TimeRange(p10_s=0.9 * seconds, p50_s=seconds, p90_s=1.1 * seconds))
    sweep = sweeptime.with_evaluations(sweeptime.Sweep(plan.spec, plan.runs, plan.estimates, None, plan.node),
                                       split_lengths)
    plan.forecast = sweeptime.plan_forecast(sweep, None, split_lengths)
    plan.evaluations = sweep.evaluations or {}
    return plan


def with_predictions(plan: Plan):
    """What scaffold writes into run.yaml's estimates."""
    return recorded_estimates(plan.runs, plan.estimates, plan.evaluations, plan.forecast)


def _by_hand(plan: Plan, start_s: float) -> dict[str, float]:
    """Each run's time: its training (start-up inside), its evaluation job's start (the fine-tuned runs' measured
    start-up; the control starts as its model's fine-tuned run does) and its evaluation (forecast/evalrun.py, the
    evaluation's own owner, asked here directly); no mid-epoch saves (10 steps, no checkpoint_every)."""
    out = {}
    for cfg in plan.runs:
        evaluation = predict_run_eval(cfg, None, split_lengths, [], [], errors=[]).seconds
        assert evaluation is not None
        training = TRAIN_S[cfg.training.lora_rank] if cfg.training is not None else 0.0
        out[cfg.name] = training + start_s + evaluation
    return out


def _printed(plan: Plan, capsys) -> str:
    print_plan(plan)
    return capsys.readouterr().out


def test_one_cpu_slot_the_makespan_is_every_runs_training_evaluation_and_start_ups(write_spec, capsys):
    plan = _plan(write_spec)
    hand = _by_hand(plan, STARTUP_S)
    assert len(hand) == 3  # two fine-tuned runs and the control
    f = plan.forecast
    assert f is not None and f.makespan_s == pytest.approx(sum(hand.values()), abs=0.3)  # one after another
    assert f.makespan_s > sum(TRAIN_S.values()) + 3 * STARTUP_S  # more than the training (the old figure)
    span = human_seconds(f.makespan_s)
    assert f"**Predicted makespan: {span} (P10–P90" in render_plan_md(plan)
    assert f"predicted makespan {span} (P10–P90" in _printed(plan, capsys)
    recorded = with_predictions(plan)
    assert {e.makespan_s for e in recorded.values()} == {f.makespan_s}
    assert all(e.makespan_range is not None and e.makespan_range.p90_s == f.makespan_p90_s for e in recorded.values())


def test_runs_side_by_side_on_the_cpu_are_placed_longest_first_on_its_shares(write_spec):
    plan = _plan(write_spec, resources={"cpu_runs_at_once": 2})
    t = sorted(_by_hand(plan, STARTUP_S).values(), reverse=True)
    # the longest on one share, the next on the other, the third after the shorter of those two
    assert plan.forecast is not None and plan.forecast.makespan_s == pytest.approx(max(t[0], t[1] + t[2]), abs=0.3)
    assert f"**Predicted makespan: {human_seconds(plan.forecast.makespan_s)}" in render_plan_md(plan)
    assert "| CPU share 2 |" in render_plan_md(plan)


def test_a_vllm_engine_adds_the_servers_start_to_every_runs_evaluation(write_spec, capsys):
    plan = _plan(write_spec, eval={"max_tokens": 8, "engine": "vllm"})
    hand = _by_hand(plan, STARTUP_S + VLLM_SERVER_START_S)
    f = plan.forecast
    assert f is not None and all(r.eval_start_s == STARTUP_S + VLLM_SERVER_START_S for r in f.runs)
    assert f.makespan_s == pytest.approx(sum(hand.values()), abs=0.3)
    assert f"predicted makespan {human_seconds(f.makespan_s)}" in _printed(plan, capsys)
    assert {e.makespan_s for e in with_predictions(plan).values()} == {f.makespan_s}


def test_the_deadline_verdict_and_the_printed_makespan_are_one_forecast(write_spec):
    plan = make_plan(write_spec(), deadline="10h")
    assert plan.deadline is not None and plan.deadline.search is None
    assert plan.forecast is plan.deadline  # the verdict's own forecast, not a second computation
    assert f"**Predicted makespan: {human_seconds(plan.deadline.makespan_s or 0)}" in render_plan_md(plan)


def test_a_cpu_slots_later_training_jobs_start_warm_in_the_forecast(write_spec, monkeypatch):
    """With the training stack's import recorded here (4 s, given), the local executor's later training job on a
    CPU slot skips it (execute/local_jobs.py forks a lane's jobs from one import): one slot, the two fine-tuned
    runs one after the other, the second 4 s shorter; the control's evaluation has no training job to skip. On
    Slurm every job starts cold."""
    from tunelab.forecast import jobstart

    monkeypatch.setattr(jobstart, "training_import_s", lambda: 4.0)
    plan = _plan(write_spec)
    hand = _by_hand(plan, STARTUP_S)
    f = plan.forecast
    assert f is not None and {r.run: r.warm_s for r in f.runs} == {
        cfg.name: (4.0 if cfg.training is not None else 0.0) for cfg in plan.runs}
    assert f.makespan_s == pytest.approx(sum(hand.values()) - 4.0, abs=0.3)
    assert {e.makespan_s for e in with_predictions(plan).values()} == {f.makespan_s}
    slurm = _plan(write_spec, resources={"executor": "slurm"})
    assert slurm.forecast is not None and {r.warm_s for r in slurm.forecast.runs} == {0.0}
