"""Progress and ETA of a training run, from its own files (status.json + metrics.jsonl), for `tunelab status`."""

from __future__ import annotations

from tunelab.fsutil import read_jsonl
from tunelab.runconfig import RunConfig
from tunelab.train import status as st


def run_progress(cfg: RunConfig, status: dict) -> tuple[str, str]:
    """("step S/T, epoch E/N", "ETA") or empty strings before the first logged step."""
    step, total = status.get("step"), status.get("total_steps")
    if not step or not total:
        return "", ""
    epoch = status.get("epoch")
    prog = f"step {step}/{total}" + (f", epoch {epoch:.2f}/{cfg.training.epochs}" if epoch is not None and cfg.training else "")
    rows = [r for r in read_jsonl(cfg.run_dir / st.METRICS_FILE) if r.get("elapsed_s") and r.get("step")]
    eta = ""
    if rows and step < total:
        rate = rows[-1]["elapsed_s"] / rows[-1]["step"]
        secs = int(rate * (total - step))
        eta = f"{secs // 60}m{secs % 60:02d}s"
    return prog, eta
