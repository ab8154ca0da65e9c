"""Where one stage sits in its run. An unstaged run is the single stage with no name and no offsets, so
the runner trains both alike and the staged loop (stages.py) only chooses the next context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.rundir.checkpoints import Counters, stage_state_dir
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


@dataclass(frozen=True)
class StageContext:
    """Offsets of the stage's steps and epochs, its trainer-state directory, and what it starts from."""

    name: str | None = None
    index: int = 0
    optimizer: str = "fresh"
    count: int = 1
    step_offset: int = 0
    epoch_offset: int = 0
    init_adapter: Path | None = None  # the previous stage's final adapter
    init_optimizer: Path | None = None  # the previous stage's last trainer checkpoint (optimizer: carried)
    counters: Counters | None = None  # the run's counters when the previous stage ended

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    def state_dir(self, run_dir: Path) -> Path:
        return stage_state_dir(run_dir, self.name)

    def label(self) -> str:
        return f"stage {self.index + 1}/{self.count} ({self.name})" if self.name else ""
