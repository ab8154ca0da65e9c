"""results: one record per run and control, from the ledger (after ingesting the run dirs)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tunelab import ledger
from tunelab.experiment import load_runs

FIELDS = ("name", "type", "model", "dataset", "factors", "state", "final_loss", "final_val_loss", "steps",
          "duration_s", "tokens_per_s", "peak_memory_gib", "score", "eval")


def collect_results(experiment_dir: str | Path) -> list[dict[str, Any]]:
    """Ingest every run directory, then read one record per run back from the ledger."""
    exp = Path(experiment_dir)
    runs = load_runs(exp)
    ledger.ingest_all(exp, runs)
    by_name = {r["name"]: r for r in ledger.query(exp, "SELECT * FROM runs")}
    evals: dict[str, list[dict]] = {}
    for e in ledger.query(exp, "SELECT * FROM evals ORDER BY run, epoch"):
        evals.setdefault(e["run"], []).append(
            {k: e[k] for k in ("label", "epoch", "task", "split", "metric", "score", "samples", "correct", "log_path")}
        )
    out = []
    for cfg in runs:
        row = by_name[cfg.name]
        scores = evals.get(cfg.name, [])
        out.append({
            "name": cfg.name,
            "type": "fine-tuned" if cfg.kind == "finetune" else "control",
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
            # the headline score: the last evaluated epoch (or the base model, for a control)
            "score": scores[-1]["score"] if scores else None,
            "eval": scores,
            "run_dir": row["run_dir"],
            "error": row["error"],
        })
    return out


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = [f for f in FIELDS if f != "eval"] + ["eval_by_epoch"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        flat = dict(r)
        flat["factors"] = ";".join(f"{k}={v}" for k, v in r["factors"].items())
        flat["eval_by_epoch"] = ";".join(f"{e['label']}={e['score']}" for e in r["eval"])
        w.writerow(flat)
    return buf.getvalue()
