"""results: one record per run, control and eval-only run, from the ledger (after ingesting the run dirs).

Each record carries every evaluation: one entry per checkpoint × task with all its metrics (and, for a
staged run, the checkpoint's stage and whether the stage ends on it, as the report labels it). The
headline `score` is the first task's primary metric (spec order) on the last evaluated checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tunelab import ledger
from tunelab.experiment import load_runs
from tunelab.runconfig import RunConfig
from tunelab.train.stages import NO_STAGE, CheckpointStage, checkpoint_stages

FIELDS = ("name", "type", "model", "dataset", "factors", "state", "final_loss", "final_val_loss", "steps",
          "duration_s", "tokens_per_s", "peak_memory_gib", "score", "score_ci_low", "score_ci_high", "eval")
TYPES = {"finetune": "fine-tuned", "control": "control", "eval_only": "eval-only"}
EVAL_FIELDS = ("label", "epoch", "task", "builtin", "file", "dataset", "split", "samples", "log_path",
               "evaluated_at")


def eval_records(rows: list[dict[str, Any]], task_order: list[str]) -> list[dict[str, Any]]:
    """Ledger eval rows (one per metric) → one record per checkpoint × task, with `metrics`,
    `primary_metric` and `score`; ordered by checkpoint (base first, then epochs), then task."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        rec = grouped.setdefault((r["label"], r["task"]), {
            **{k: r[k] for k in EVAL_FIELDS}, "primary_metric": None, "score": None,
            "greater_is_better": bool(r["greater_is_better"]), "metrics": {}, "intervals": {}})
        rec["metrics"][r["metric"]] = r["value"]
        if r.get("ci_low") is not None:
            rec["intervals"][r["metric"]] = {"low": r["ci_low"], "high": r["ci_high"], "method": r["ci_method"],
                                             "seed": r["ci_seed"], "resamples": r["ci_resamples"]}
        if r["is_primary"]:
            rec["primary_metric"], rec["score"] = r["metric"], r["value"]
    order = {t: i for i, t in enumerate(task_order)}
    return sorted(grouped.values(), key=lambda e: (-1 if e["epoch"] is None else e["epoch"], e["label"],
                                                   order.get(e["task"], len(order)), e["task"]))


def headline(evals: list[dict[str, Any]], task_order: list[str]) -> dict[str, Any] | None:
    """The first task's record on the last evaluated checkpoint (None before any evaluation)."""
    if not evals:
        return None
    last = evals[-1]["label"]
    at_last = [e for e in evals if e["label"] == last]
    return next((e for t in task_order for e in at_last if e["task"] == t), at_last[0])


def score_ci(rec: dict[str, Any] | None) -> list[float] | None:
    """[low, high] of a record's primary metric (None without per-sample scores)."""
    iv = rec["intervals"].get(rec["primary_metric"]) if rec else None
    return [iv["low"], iv["high"]] if iv else None


def _with_stages(cfg: RunConfig, evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record with its checkpoint's `stage`, `stage_epoch` and `ends_stage` (None: unstaged, or a base model)."""
    stages = checkpoint_stages(cfg) if cfg.kind == "finetune" else {}
    return [{**e, **(stages[e["epoch"]].to_dict() if e["epoch"] in stages else NO_STAGE)} for e in evals]


def _record(cfg: RunConfig, row: dict[str, Any], evals: list[dict[str, Any]]) -> dict[str, Any]:
    tasks = [t.name for t in cfg.eval.resolved_tasks()]
    evals = _with_stages(cfg, evals)
    head = headline(evals, tasks)
    last = evals[-1]["label"] if evals else None
    return {
        "name": cfg.name,
        "type": TYPES[cfg.kind],
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "factors": {k: v for k, v in cfg.factors.items() if k not in ("model", "dataset")},
        "state": row["state"],
        "final_loss": row["final_loss"],
        "final_val_loss": row["final_val_loss"],
        "steps": row["steps"],
        "duration_s": row["duration_s"],
        "tokens_per_s": row["tokens_per_s"],
        "peak_memory_gib": row["peak_memory_gib"],
        "score": head["score"] if head else None,
        "score_ci": score_ci(head),
        "score_task": head["task"] if head else None,
        "score_metric": head["primary_metric"] if head else None,
        "scores": {e["task"]: e["score"] for e in evals if e["label"] == last},  # primary, last checkpoint
        "eval": evals,
        "run_dir": row["run_dir"],
        "error": row["error"],
    }


def collect_results(experiment_dir: str | Path) -> list[dict[str, Any]]:
    """Ingest every run directory, then read one record per run back from the ledger."""
    exp = Path(experiment_dir)
    runs = load_runs(exp)
    ledger.ingest_all(exp, runs)
    by_name = {r["name"]: r for r in ledger.query(exp, "SELECT * FROM runs")}
    rows: dict[str, list[dict]] = {}
    for e in ledger.query(exp, "SELECT * FROM evals"):
        rows.setdefault(e["run"], []).append(e)
    return [_record(cfg, by_name[cfg.name], eval_records(rows.get(cfg.name, []),
                                                         [t.name for t in cfg.eval.resolved_tasks()]))
            for cfg in runs]


def _ci_text(iv: dict[str, Any] | None) -> str:
    return f"[{iv['low']:.6g},{iv['high']:.6g}]" if iv else ""


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)


def _stages_text(evals: list[dict[str, Any]]) -> str:
    """A staged run's evaluated checkpoints and their stages: `epoch_2=hard/epoch_1(end)`, `;`-separated."""
    at = {e["label"]: CheckpointStage(e["stage"], e["stage_epoch"], e["ends_stage"]).label
          + ("(end)" if e["ends_stage"] else "") for e in evals if e["stage"] is not None}
    return ";".join(f"{label}={text}" for label, text in at.items())


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One row per run: its fields, `<task>.<metric>` of the last checkpoint with `.ci_low`/`.ci_high` (its 95 %
    interval), `evals` holding every checkpoint × task × metric as `label/task/metric=value[low,high]`, and
    `checkpoint_stages` a staged run's evaluated checkpoints as `epoch_N=STAGE/epoch_K` (`(end)`: the stage ends
    on it)."""
    metric_cols: list[str] = []
    for r in rows:
        for e in r["eval"]:
            for m in e["metrics"]:
                for col in (f"{e['task']}.{m}", f"{e['task']}.{m}.ci_low", f"{e['task']}.{m}.ci_high"):
                    if col not in metric_cols:
                        metric_cols.append(col)
    buf = io.StringIO()
    cols = [f for f in FIELDS if f != "eval"] + metric_cols + ["evals", "checkpoint_stages"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        flat = dict(r)
        flat["factors"] = ";".join(f"{k}={v}" for k, v in r["factors"].items())
        flat["score_ci_low"], flat["score_ci_high"] = r["score_ci"] or (None, None)
        last = r["eval"][-1]["label"] if r["eval"] else None
        for e in r["eval"]:
            if e["label"] == last:
                flat.update({f"{e['task']}.{m}": v for m, v in e["metrics"].items()})
                for m, iv in e["intervals"].items():
                    flat.update({f"{e['task']}.{m}.ci_low": iv["low"], f"{e['task']}.{m}.ci_high": iv["high"]})
        flat["evals"] = ";".join(f"{e['label']}/{e['task']}/{m}={v}{_ci_text(e['intervals'].get(m))}"
                                 for e in r["eval"] for m, v in e["metrics"].items())
        flat["checkpoint_stages"] = _stages_text(r["eval"])
        w.writerow(flat)
    return buf.getvalue()
