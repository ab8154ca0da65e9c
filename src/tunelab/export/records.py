"""What one tunelab run exports to a tracker, independent of the tracker, read from the ledger and metrics.jsonl, so a
tracker shows the numbers `tunelab results` shows, step by step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tunelab.ledger.results import RunRecord, collect_results
from tunelab.rundir.config import RunConfig, flatten
from tunelab.rundir.experiment import load_runs
from tunelab.rundir.layout import RunState
from tunelab.rundir.metrics import read_metrics
from tunelab.rundir.status import read_status

# metrics.jsonl fields logged per step (others, such as cumulative token counts, are bookkeeping)
STEP_FIELDS = ("loss", "val_loss", "lr", "grad_norm", "epoch", "tokens_per_s", "peak_memory_gib")
# ledger/summary fields logged once, as summary.<field> (step 0): apart from the per-step series
SUMMARY_FIELDS = ("final_loss", "final_val_loss", "steps", "duration_s", "tokens_per_s", "peak_memory_gib")


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    step: int
    timestamp_ms: int


@dataclass
class TrackedRun:
    """One tunelab run as a tracker sees it."""

    name: str
    kind: str  # fine-tuned | control | eval-only
    state: RunState  # the ledger's; trackers get its value
    run_dir: Path
    params: dict[str, str]
    metrics: list[MetricPoint] = field(default_factory=list)
    # the same config nested and typed (factors under "factors"), for trackers that keep types (W&B)
    config: dict[str, Any] = field(default_factory=dict)
    start_ms: int | None = None
    end_ms: int | None = None
    error: str | None = None


@dataclass
class TrackedSweep:
    name: str
    experiment_dir: Path
    runs: list[TrackedRun]
    report_dir: Path | None  # report/ when `tunelab report` has written it


def _ms(iso: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None
    except ValueError:
        return None


def _step_points(cfg: RunConfig, start_ms: int) -> list[MetricPoint]:
    """One point per logged step and field, timestamped at the run's start + elapsed_s."""
    points = []
    for row in read_metrics(cfg.run_dir):
        if row.step is None:
            continue
        stamp = start_ms + int(float(row.elapsed_s or 0) * 1000)
        points += [MetricPoint(k, float(v), int(row.step), stamp) for k in STEP_FIELDS
                   if isinstance(v := getattr(row, k), (int, float))]
    return points


def _eval_points(result: RunRecord, start_ms: int) -> list[MetricPoint]:
    """eval.<task>.<metric> at step = the checkpoint's epoch (0 for a base model or a given checkpoint)."""
    points = []
    for e in result.evals:
        stamp = _ms(e.evaluated_at) or start_ms
        points += [MetricPoint(f"eval.{e.task}.{m}", float(v), int(e.epoch or 0), stamp)
                   for m, v in e.metrics.items() if isinstance(v, (int, float))]
    if result.score is not None:
        points.append(MetricPoint("score", float(result.score), 0, start_ms))
    return points


def run_record(cfg: RunConfig, result: RunRecord) -> TrackedRun:
    status = read_status(cfg.run_dir)
    start = _ms(status.first_started_at or status.started_at)
    base = start or int(cfg.run_dir.stat().st_mtime * 1000)
    config = cfg.model_dump(mode="json", exclude={"factors", "estimate", "experiment_dir"})
    params = flatten(config)
    params.update({f"factor.{k}": json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                   for k, v in cfg.factors.items()})
    # a staged run's evaluated checkpoints → {label: {stage, stage_epoch, ends_stage}}, as `results` records them
    stages = {e.label: e.stage.to_dict() for e in result.evals if e.stage is not None}
    params.update(flatten({"checkpoint_stages": stages}))
    summary = [MetricPoint(f"summary.{k}", float(v), 0, base) for k in SUMMARY_FIELDS
               if isinstance(v := getattr(result, k), (int, float))]
    return TrackedRun(
        name=cfg.name, kind=result.kind, state=result.state, run_dir=cfg.run_dir, params=params,
        metrics=_step_points(cfg, base) + summary + _eval_points(result, base),
        start_ms=start, end_ms=_ms(status.finished_at), error=result.error,
        config={**config, "factors": dict(cfg.factors), **({"checkpoint_stages": stages} if stages else {})})


def sweep_record(experiment_dir: str | Path) -> TrackedSweep:
    exp = Path(experiment_dir).resolve()
    runs = load_runs(exp)
    results = {r.name: r for r in collect_results(exp)}
    report = exp / "report"
    return TrackedSweep(name=runs[0].experiment, experiment_dir=exp,
                        runs=[run_record(cfg, results[cfg.name]) for cfg in runs],
                        report_dir=report if (report / "report.md").is_file() else None)
