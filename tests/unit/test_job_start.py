"""A job's start-up has one owner (forecast/jobstart.py, issue 54): its sources in order, a vLLM server's start added
when the planned engine is vLLM, and the three places that used to work it out their own way — the evaluation's
prediction (forecast/evaltime.py), the plan's evaluation cost (forecast/evalrun.py) and the re-plan while the sweep
runs (forecast/remaining.py) — all give the figure worked out here by hand from the history's rows."""

from __future__ import annotations

import pytest

from tunelab.catalog import KNOWN_MODELS
from tunelab.forecast.evalrun import predict_run_eval
from tunelab.forecast.evaltime import predict_eval_time
from tunelab.forecast.jobstart import VLLM_SERVER_START_S, eval_start, job_start
from tunelab.forecast.remaining import Phase, sweep_remaining
from tunelab.forecast.runs import ASSUMED_STARTUP_S
from tunelab.ledger import history
from tunelab.ledger.generation import GenerationOrigin, GenerationRow
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.estimate import RunEstimate, SourceKind
from tunelab.spec.evaluation import Engine

MODEL = "qwen2.5-0.5b"  # a catalog model: its architecture is known without a directory
ROWS = {"test": tuple((30, 25) for _ in range(10))}  # 10 test rows: 30 tokens, the answer from token 25


def _row(run: str, startup_s: float, device: str = "cpu", other_model: bool = False) -> HistoryRun:
    arch = KNOWN_MODELS[MODEL]
    return HistoryRun(key=run, source="tunelab", origin="measured", run=run, device=device,
                      layers=arch.layers + (1 if other_model else 0), hidden=arch.hidden, parameters=arch.parameters,
                      tokens_per_s=100.0, per_token_s=0.01, startup_s=startup_s)


# three runs of this model on this CPU (11, 12, 14 s: the median 12), one on a GPU and one of another model here
HISTORY = [_row("a", 11.0), _row("b", 14.0), _row("c", 12.0), _row("gpu", 3.0, device="NVIDIA H100"),
           _row("other", 40.0, other_model=True)]
PROBE = GenerationRow(key=f"probe:{MODEL}", origin=GenerationOrigin.PROBED, model_path=MODEL, device="cpu",
                      prefill_tokens_per_s=1000.0, decode_fixed_s=0.01, decode_row_s=0.002,
                      recorded_at="2026-01-01T00:00:00")


def test_the_job_start_is_the_runs_measured_one_then_the_historys_median_here_then_assumed():
    measured = RunEstimate(run="r", startup_s=7.5, startup_kind="measured")
    assert job_start(MODEL, None, HISTORY, measured).seconds == 7.5
    assumed_estimate = RunEstimate(run="r", startup_s=60.0, startup_kind="assumed")  # an assumption is not a measure
    by_history = job_start(MODEL, None, HISTORY, assumed_estimate)
    assert (by_history.seconds, by_history.kind) == (12.0, SourceKind.MEASURED)
    others = job_start(MODEL, None, [_row("other", 40.0, other_model=True)])
    assert (others.seconds, others.kind) == (40.0, SourceKind.ASSUMED) and "other models" in others.source
    nothing = job_start(MODEL, None, [])
    assert (nothing.seconds, nothing.kind) == (ASSUMED_STARTUP_S, SourceKind.ASSUMED)


def test_a_vllm_evaluation_starts_its_job_then_its_server():
    hf = eval_start(MODEL, None, HISTORY, Engine.HF)
    vllm = eval_start(MODEL, None, HISTORY, Engine.VLLM)
    assert hf.seconds == 12.0 and hf.server_s == 0
    assert vllm.seconds == 12.0 + VLLM_SERVER_START_S and vllm.server_s == VLLM_SERVER_START_S
    assert "vLLM server start" in vllm.source
    wide, narrow = vllm.range(), hf.range()
    assert wide.p50_s == pytest.approx(vllm.seconds, abs=0.1) and narrow.p50_s == pytest.approx(12.0, abs=0.1)
    # the server's start is assumed: its width adds to the job's own (in quadrature)
    assert wide.p90_s - wide.p50_s > narrow.p90_s - narrow.p50_s


def _cfg(tmp_path, engine: str, kind: str = "finetune", estimate: RunEstimate | None = None) -> RunConfig:
    return RunConfig(name=f"r-{engine}", kind=kind, experiment="e", experiment_dir=str(tmp_path),  # type: ignore[arg-type]
                     model={"name": "q", "path": MODEL}, dataset={"name": "d", "path": str(tmp_path)},
                     training={"epochs": 1} if kind == "finetune" else None,
                     eval={"max_tokens": 8, "engine": engine}, estimate=estimate)


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_the_three_former_formulas_give_the_owners_start_up(write_spec, tmp_path, monkeypatch, engine):
    hand = 12.0 + (VLLM_SERVER_START_S if engine == "vllm" else 0.0)  # the median here, then the server
    # 1. the evaluation's own prediction (one target × task; its load was forecast/evaltime.py's _load_seconds)
    got = predict_eval_time(model=MODEL, gpu=None, samples=10, prompt_tokens=[25] * 10, max_tokens=8, batch_size=16,
                            history=HISTORY, generation=[PROBE], engine=Engine(engine))
    assert got.load_s == hand
    # 2. the plan's evaluation cost (the makespan's evaluation start; was plan/evalcost.py's job_start)
    cost = predict_run_eval(_cfg(tmp_path, engine), None, lambda c: ROWS, HISTORY, [PROBE], errors=[])
    assert cost.start_s == hand
    # 3. the re-plan while the sweep runs (was forecast/remaining.py's _evaluation: the estimate's or 60 s assumed):
    # a run evaluating has its evaluation's start and its evaluation left
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    history.record(HISTORY)
    exp = write_spec().parent
    est = RunEstimate(run=f"r-{engine}", eval_seconds=20.0, eval_source="history")
    cfg = _cfg(exp, engine, estimate=est)
    save_run_config(cfg, cfg.run_dir / "run.yaml")
    left = sweep_remaining(exp, {cfg.name: Phase.EVALUATING}, runs=[cfg]).runs[0]
    assert left.left_s == pytest.approx(hand + 20.0, abs=0.1)
