"""Progress and ETA of a training run, from its own files (status.json + metrics.jsonl), for `tunelab status`."""

from __future__ import annotations

from tunelab.rundir import Status, read_metrics
from tunelab.rundir.config import RunConfig
from tunelab.rundir.metrics import seconds_left


def eta_seconds(cfg: RunConfig, status: Status) -> float | None:
    """Seconds left at the run's live pace (rundir/metrics.py `seconds_left`); None before a step or once done."""
    if not status.step or not status.total_steps or status.step >= status.total_steps:
        return None
    return seconds_left(read_metrics(cfg.run_dir), status.step, status.total_steps)


def clock(secs: float | None) -> str:
    """12m05s ('' when unknown)."""
    if secs is None:
        return ""
    secs = int(secs)
    return f"{secs // 60}m{secs % 60:02d}s"


def run_progress(cfg: RunConfig, status: Status) -> tuple[str, str]:
    """("step S/T, epoch E/N", "ETA") or empty strings before the first logged step."""
    step, total = status.step, status.total_steps
    if not step or not total:
        return "", ""
    epoch = status.epoch
    epochs = sum(t.epochs for t in cfg.trainings())  # a staged run: its stages' epochs, counted on across them
    prog = f"step {step}/{total}" + (f", epoch {epoch:.2f}/{epochs}" if epoch is not None and epochs else "")
    if status.stage and cfg.stages:
        prog += f", stage {(status.stage_index or 0) + 1}/{len(cfg.stages)} ({status.stage})"
    return prog, clock(eta_seconds(cfg, status))
