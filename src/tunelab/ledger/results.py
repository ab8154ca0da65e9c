"""results: one record per run, control and eval-only run, from the ledger. Each record carries every checkpoint × task
with all its metrics; the headline `score` is the first task's primary metric on the last evaluated checkpoint. `results
--json`, the CSV and the terminal table are all made from them."""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.ledger import store as ledger
from tunelab.ledger.rows import EvaluatedTask
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import load_runs
from tunelab.rundir.layout import RunState
from tunelab.rundir.stages import NO_STAGE, CheckpointStage, checkpoint_stages
from tunelab.stats.records import Interval

FIELDS = ("name", "type", "model", "dataset", "factors", "state", "final_loss", "final_val_loss", "steps",
          "duration_s", "tokens_per_s", "peak_memory_gib", "score", "score_ci_low", "score_ci_high", "eval")
TYPES = {"finetune": "fine-tuned", "control": "control", "eval_only": "eval-only"}
INTERVAL_KEYS = {"low", "high", "method", "seed", "resamples"}  # an interval as results JSON shows it
SHARED = [f.name for f in dataclasses.fields(EvaluatedTask)]  # what a task's eval rows have in common


@dataclass(frozen=True, kw_only=True)
class EvalRecord(EvaluatedTask):
    """One task on one checkpoint of a run: every metric the task scored, each with its 95 % interval."""

    primary_metric: str | None = None
    score: float | None = None  # = metrics[primary_metric]
    greater_is_better: bool = True
    metrics: dict[str, float | None] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)
    stage: CheckpointStage | None = None  # a staged run's checkpoint: its stage (None: unstaged, or a base model)

    def bounds(self, metric: str | None) -> tuple[float, float] | None:
        """(low, high) of a metric's 95 % interval; None where none was computed."""
        iv = self.intervals.get(metric) if metric else None
        return (iv.low, iv.high) if iv else None

    def score_bounds(self) -> tuple[float, float] | None:
        """(low, high) of the primary metric's interval."""
        return self.bounds(self.primary_metric)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "epoch": self.epoch, "task": self.task, "builtin": self.builtin,
                "file": self.file, "dataset": self.dataset, "split": self.split, "samples": self.samples,
                "log_path": self.log_path, "evaluated_at": self.evaluated_at, "primary_metric": self.primary_metric,
                "score": self.score, "greater_is_better": self.greater_is_better, "metrics": dict(self.metrics),
                "intervals": {m: iv.model_dump(include=INTERVAL_KEYS) for m, iv in self.intervals.items()},
                **(self.stage.to_dict() if self.stage else NO_STAGE)}


@dataclass
class RunRecord:
    """One run, control or eval-only run as `tunelab results` shows it: ledger values and every evaluation."""

    name: str
    kind: str  # fine-tuned | control | eval-only (JSON: "type")
    model: str
    dataset: str
    factors: dict[str, Any]  # swept values, model and dataset excluded
    state: RunState  # the ledger's (JSON: its value)
    final_loss: float | None
    final_val_loss: float | None
    steps: int | None
    duration_s: float | None
    tokens_per_s: float | None
    peak_memory_gib: float | None
    evals: list[EvalRecord]  # base first, then by epoch; tasks in spec order
    head: EvalRecord | None  # the headline: the first task on the last evaluated checkpoint
    run_dir: str
    error: str | None

    @property
    def score(self) -> float | None:
        return self.head.score if self.head else None

    @property
    def score_ci(self) -> tuple[float, float] | None:
        return self.head.score_bounds() if self.head else None

    @property
    def last_label(self) -> str | None:
        return self.evals[-1].label if self.evals else None

    def last_evals(self) -> list[EvalRecord]:
        """Each task's record on the last evaluated checkpoint."""
        return [e for e in self.evals if e.label == self.last_label]

    def to_json(self) -> dict[str, Any]:
        ci = self.score_ci
        return {
            "name": self.name, "type": self.kind, "model": self.model, "dataset": self.dataset,
            "factors": dict(self.factors), "state": self.state, "final_loss": self.final_loss,
            "final_val_loss": self.final_val_loss, "steps": self.steps, "duration_s": self.duration_s,
            "tokens_per_s": self.tokens_per_s, "peak_memory_gib": self.peak_memory_gib, "score": self.score,
            "score_ci": list(ci) if ci else None,
            "score_task": self.head.task if self.head else None,
            "score_metric": self.head.primary_metric if self.head else None,
            "scores": {e.task: e.score for e in self.last_evals()},  # primary, last checkpoint
            "eval": [e.to_json() for e in self.evals], "run_dir": self.run_dir, "error": self.error,
        }


def eval_records(rows: list[ledger.EvalRow], task_order: list[str]) -> list[EvalRecord]:
    """Ledger eval rows (one per metric) → one record per checkpoint × task, base first, then epochs, then task."""
    grouped: dict[tuple[str, str], list[ledger.EvalRow]] = {}
    for r in rows:
        grouped.setdefault((r.label, r.task), []).append(r)
    records = [_eval_record(group) for group in grouped.values()]
    order = {t: i for i, t in enumerate(task_order)}
    return sorted(records, key=lambda e: (-1 if e.epoch is None else e.epoch, e.label,
                                          order.get(e.task, len(order)), e.task))


def _eval_record(rows: list[ledger.EvalRow]) -> EvalRecord:
    """The metrics of one task on one checkpoint, one ledger row each, as one record."""
    primary = next((r for r in rows if r.is_primary), None)
    return EvalRecord(
        **{f: getattr(rows[0], f) for f in SHARED}, greater_is_better=rows[0].greater_is_better,
        primary_metric=primary.metric if primary else None, score=primary.value if primary else None,
        metrics={r.metric: r.value for r in rows},
        intervals={r.metric: iv for r in rows if (iv := r.interval) is not None})


def headline(evals: list[EvalRecord], task_order: list[str]) -> EvalRecord | None:
    """The first task's record on the last evaluated checkpoint (None before any evaluation)."""
    if not evals:
        return None
    at_last = [e for e in evals if e.label == evals[-1].label]
    return next((e for t in task_order for e in at_last if e.task == t), at_last[0])


def _record(cfg: RunConfig, row: ledger.RunRow, evals: list[EvalRecord]) -> RunRecord:
    stages = checkpoint_stages(cfg) if cfg.kind == "finetune" else {}  # an eval's stage: None unstaged, or a base model
    evals = [dataclasses.replace(e, stage=stages.get(e.epoch)) if e.epoch is not None else e for e in evals]
    return RunRecord(
        name=cfg.name, kind=TYPES[cfg.kind], model=cfg.model.name, dataset=cfg.dataset.name,
        factors={k: v for k, v in cfg.factors.items() if k not in ("model", "dataset")}, state=row.state,
        final_loss=row.final_loss, final_val_loss=row.final_val_loss, steps=row.steps, duration_s=row.duration_s,
        tokens_per_s=row.tokens_per_s, peak_memory_gib=row.peak_memory_gib, evals=evals,
        head=headline(evals, [t.name for t in cfg.eval.resolved_tasks()]), run_dir=row.run_dir, error=row.error)


def collect_results(experiment_dir: str | Path) -> list[RunRecord]:
    """Ingest every run directory changed since its last ingest, then read one record per run from the ledger."""
    exp = Path(experiment_dir)
    runs = load_runs(exp)
    ledger.ingest_all(exp, runs)
    by_name = {r.name: r for r in ledger.read_runs(exp)}
    rows: dict[str, list[ledger.EvalRow]] = {}
    for e in ledger.read_evals(exp):
        rows.setdefault(e.run, []).append(e)
    return [_record(cfg, by_name[cfg.name], eval_records(rows.get(cfg.name, []),
                                                         [t.name for t in cfg.eval.resolved_tasks()]))
            for cfg in runs]


def _ci_text(iv: Interval | None) -> str:
    return f"[{iv.low:.6g},{iv.high:.6g}]" if iv else ""


def _metric_columns(records: list[RunRecord]) -> list[str]:
    cols: list[str] = []
    for r in records:
        for e in r.evals:
            for m in e.metrics:
                for col in (f"{e.task}.{m}", f"{e.task}.{m}.ci_low", f"{e.task}.{m}.ci_high"):
                    if col not in cols:
                        cols.append(col)
    return cols


def _stages_text(evals: list[EvalRecord]) -> str:
    """A staged run's evaluated checkpoints and their stages: `epoch_2=hard/epoch_1(end)`, `;`-separated."""
    at = {e.label: e.stage.label + ("(end)" if e.stage.ends_stage else "") for e in evals if e.stage is not None}
    return ";".join(f"{label}={text}" for label, text in at.items())


def _csv_row(r: RunRecord) -> dict[str, Any]:
    flat = r.to_json()
    flat["factors"] = ";".join(f"{k}={v}" for k, v in r.factors.items())
    flat["score_ci_low"], flat["score_ci_high"] = r.score_ci or (None, None)
    for e in r.last_evals():
        flat.update({f"{e.task}.{m}": v for m, v in e.metrics.items()})
        for m, iv in e.intervals.items():
            flat.update({f"{e.task}.{m}.ci_low": iv.low, f"{e.task}.{m}.ci_high": iv.high})
    flat["evals"] = ";".join(f"{e.label}/{e.task}/{m}={v}{_ci_text(e.intervals.get(m))}"
                             for e in r.evals for m, v in e.metrics.items())
    flat["checkpoint_stages"] = _stages_text(r.evals)
    return flat


def to_csv(records: list[RunRecord]) -> str:
    """One row per run: its fields, `<task>.<metric>` of the last checkpoint with `.ci_low`/`.ci_high`, `evals` as
    `label/task/metric=value[low,high]`, and `checkpoint_stages` as `epoch_N=STAGE/epoch_K` (`(end)`: stage's last)."""
    buf = io.StringIO()
    cols = [f for f in FIELDS if f != "eval"] + _metric_columns(records) + ["evals", "checkpoint_stages"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in records:
        w.writerow(_csv_row(r))
    return buf.getvalue()
