"""The run files the job writes, held for the whole job (every stage of it): each is read at most once, for
what earlier starts left, and from then on the job keeps what it writes, so it never reads back its own writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.rundir.metrics import MetricRow
from tunelab.rundir.order import OrderRecord
from tunelab.rundir.status import StatusWriter


@dataclass
class HeldFiles:
    """status.json, metrics.jsonl's rows and data_order.jsonl's records as the job holds them (main process).
    The lists are None until resume (train/resume.py) reads them; the writers then append to these very lists."""

    status: StatusWriter
    metrics: list[MetricRow] | None = None
    orders: list[OrderRecord] | None = None

    @classmethod
    def of(cls, run_dir: Path) -> HeldFiles:
        return cls(StatusWriter(run_dir))
