"""The storage section's predicted-beside-measured table: what plan said each run would write (run.yaml's
estimate.disk, estimate/storage.py) next to what its directory holds, so a prediction that drifts is seen."""

from __future__ import annotations

from tunelab.fsutil import human_bytes
from tunelab.report.data import ReportData
from tunelab.report.document import Para, Table


def predicted_blocks(data: ReportData) -> list[Table | Para]:
    """One row per run with a disk estimate: adapter, epoch checkpoints, trainer states, the run directory."""
    rows = []
    for r in data.runs:
        disk = r.config.estimate.disk if r.config.estimate is not None else None
        if disk is None:
            continue
        adapter = r.checkpoints[-1].adapter_bytes if r.checkpoints else None
        states = r.run_dir.joinpath("trainer_state")
        kept = len([d for d in states.rglob("checkpoint-*") if d.is_dir()]) if states.is_dir() else 0
        rows.append([r.name, f"{human_bytes(disk.adapter_bytes)} / {human_bytes(adapter)}",
                     f"{disk.epoch_checkpoints} / {len(r.checkpoints)}", f"{disk.trainer_states_kept} / {kept}",
                     f"{human_bytes(disk.total_bytes)} / {human_bytes(r.dir_bytes)}",
                     f"{(r.dir_bytes - disk.total_bytes) / disk.total_bytes:+.0%}" if disk.total_bytes else "—"])
    if not rows:
        return []
    return [Table(["Run", "Adapter (predicted / measured)", "Epoch checkpoints", "Trainer states kept",
                   "Run dir (predicted / measured)", "Measured vs predicted"], rows,
                  "Predicted: `tunelab plan`'s storage estimate (run.yaml `estimate.disk`: the adapter exact from the "
                  "LoRA shapes, logs and evaluation logs estimated); measured: the run directory now. A run still "
                  "training or not yet evaluated holds less than predicted; `tunelab archive` removes trainer "
                  "states.")]
