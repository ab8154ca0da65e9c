"""The Markdown report: overview and status, checkpoint verification, training, evaluation."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.experiment import load_runs
from tunelab.fsutil import atomic_write_text
from tunelab.report.checkpoints import verify_checkpoints
from tunelab.results import collect_results
from tunelab.spec import load_spec


def _f(v: Any, fmt: str = "{:.4g}") -> str:
    if v is None:
        return "—"
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_report(experiment_dir: str | Path) -> str:
    exp = Path(experiment_dir).resolve()
    results = collect_results(exp)
    cfgs = {c.name: c for c in load_runs(exp)}
    spec_file = exp / "experiment.yaml"
    spec = load_spec(spec_file) if spec_file.is_file() else None
    ft = [r for r in results if r["type"] == "fine-tuned"]
    ctl = [r for r in results if r["type"] == "control"]
    done = [r for r in ft if r["state"] == "completed"]
    failed = [r for r in ft if r["state"] in ("failed", "interrupted")]
    name = spec.name if spec else exp.name
    out = [f"# Experiment report: {name}", ""]
    out += [f"**Generated:** {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ", f"**Directory:** `{exp}`  "]
    if spec:
        if spec.description:
            out += [f"**Question:** {spec.description.strip()}  "]
        out += [f"**Models:** {', '.join(spec.model_levels())}  ", f"**Datasets:** {', '.join(spec.dataset_levels())}  "]
        for k, v in spec.factors.items():
            if k not in ("model", "dataset"):
                out.append(f"**{k}:** {', '.join(map(str, v))}  ")
    status = f"{len(done)} of {len(ft)} fine-tuned runs completed"
    if failed:
        status += f", {len(failed)} failed or interrupted ({', '.join(r['name'] for r in failed)})"
    evaluated_ctl = [r for r in ctl if r["score"] is not None]
    status += f"; {len(evaluated_ctl)} of {len(ctl)} controls evaluated"
    partial = len(done) < len(ft) or len(evaluated_ctl) < len(ctl)
    out += [f"**Status:** {'⚠ partial — ' if partial else '✓ '}{status}", ""]

    # Checkpoint verification
    out += ["## Checkpoint verification", ""]
    checks = {r["name"]: verify_checkpoints(cfgs[r["name"]].run_dir) for r in ft}
    epochs = sorted({c.epoch for cs in checks.values() for c in cs})
    rows = []
    for r in ft:
        by_epoch = {c.epoch: c for c in checks[r["name"]]}
        cells = []
        for e in epochs:
            c = by_epoch.get(e)
            cells.append("✗ missing" if c is None else ("✓ " + _size(c.adapter_bytes) if c.ok else "✗ " + "; ".join(c.problems)))
        notes = "complete" if checks[r["name"]] and all(c.ok for c in checks[r["name"]]) and len(by_epoch) == len(epochs) else (
            "no checkpoints" if not checks[r["name"]] else "problems")
        rows.append([r["name"], *cells, notes])
    if epochs:
        out += _table(["Run", *[f"Epoch {e}" for e in epochs], "Notes"], rows)
        out += ["", "Sizes are of `adapter_model.safetensors`; each epoch directory also holds `adapter_config.json` "
                "and the tokenizer (`runs/<run>/checkpoints/epoch_N/`).", ""]
    else:
        out += ["No checkpoints yet.", ""]

    # Training
    out += ["## Training results", ""]
    rows = [[r["name"], r["model"], ", ".join(f"{k}={v}" for k, v in r["factors"].items()) or "—", r["state"],
             _f(r["steps"], "{}"), _f(r["final_loss"]), _f(r["final_val_loss"]), _f(r["duration_s"], "{:.1f}"),
             _f(r["tokens_per_s"], "{:,.0f}"), _f(r["peak_memory_gib"], "{:.2f}")] for r in ft]
    out += _table(["Run", "Model", "Factors", "State", "Steps", "Final loss", "Final val loss", "Duration (s)",
                   "Tokens/s", "Peak mem (GiB)"], rows)
    out += ["", "From `runs/<run>/summary.json` (tokens/s: steady-state mean after the first logging interval, "
            "training time only; peak memory: CUDA max allocated on GPU, process max RSS on CPU).", ""]

    # Evaluation
    out += ["## Evaluation", ""]
    control_score = {r["model"] + "/" + r["dataset"]: r["score"] for r in ctl}
    rows = []
    for r in ft:
        base = control_score.get(r["model"] + "/" + r["dataset"])
        for e in r["eval"] or [{"label": "—", "score": None, "samples": None, "task": "—"}]:
            delta = None if e["score"] is None or base is None else e["score"] - base
            rows.append([r["name"], "fine-tuned", e["label"], e["task"], _pct(e["score"]), _pct(base),
                         "—" if delta is None else f"{100 * delta:+.1f} pp", _f(e["samples"], "{}")])
    for r in ctl:
        for e in r["eval"] or [{"label": "base", "score": None, "samples": None, "task": "—"}]:
            rows.append([r["name"], "control", e["label"], e["task"], _pct(e["score"]), "—", "—", _f(e["samples"], "{}")])
    out += _table(["Run", "Type", "Checkpoint", "Task", "Score", "Control", "Δ vs control", "Samples"], rows)
    out += ["", "Scores from `eval/<checkpoint>/scores.json` in each run directory (inspect-ai logs beside them).", ""]
    scored = [r for r in ft if r["score"] is not None]
    if scored:
        top = max(r["score"] for r in scored)
        best = [r["name"] for r in scored if r["score"] == top]
        label = "Best run" if len(best) == 1 else f"Best runs ({len(best)} tied)"
        out += [f"**{label}:** {', '.join(best)} at {_pct(top)}.", ""]
    return "\n".join(out)


def write_report(experiment_dir: str | Path) -> Path:
    exp = Path(experiment_dir)
    return atomic_write_text(exp / "report" / "report.md", render_report(exp))
