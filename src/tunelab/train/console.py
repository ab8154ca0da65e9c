"""The job's one-line progress messages on stdout (the job's log: train.log, slurm-*.out)."""

from __future__ import annotations

from tunelab.train.distributed import world


def log(msg: str) -> None:
    if world().is_main:  # one line per event, not one per process
        try:
            print(f"[tunelab train] {msg}", flush=True)
        except OSError:  # the log's disk is full: the run's own writes say so (NoSpaceError), not a progress line
            pass
