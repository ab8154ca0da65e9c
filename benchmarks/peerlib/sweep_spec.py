"""The records of the whole-sweep benchmark (issue 66 item 1): the sweep every tool runs, a pipeline's phases, and
what one repeat of one tool's pipeline gave."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peerlib.job import Job


@dataclass(frozen=True)
class SweepSpec:
    """The sweep: one model × LoRA rank × learning rate, the base beside them; the same for every tool. alpha is
    2 × rank (tunelab's default, given to every peer), LoRA on q_proj and v_proj, fp32, one seed."""

    ranks: tuple[int, ...] = (8, 32)
    learning_rates: tuple[float, ...] = (5e-4, 2e-3)
    epochs: int = 1
    micro_batch: int = 8
    max_seq_len: int = 512
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0
    max_new_tokens: int = 8
    threads: int = 2

    def configs(self) -> list[tuple[int, float]]:
        return [(r, lr) for r in self.ranks for lr in self.learning_rates]

    def packed_batch(self, mean_tokens: float) -> int:
        """A packed batch's size: the packs of max_seq_len tokens that hold about micro_batch rows, so that every
        tool, packed or not, takes about micro_batch examples per optimizer step (and the same number of steps)."""
        return max(1, round(self.micro_batch * mean_tokens / self.max_seq_len))

    def job(self, rank: int, learning_rate: float) -> Job:
        """One run of the sweep as peerlib's Job (what each peer's config writer reads)."""
        return Job(rank=rank, alpha=2 * rank, target_modules=self.target_modules, max_seq_len=self.max_seq_len,
                   micro_batch=self.micro_batch, epochs=self.epochs, learning_rate=learning_rate, seed=self.seed,
                   threads=self.threads, max_new_tokens=self.max_new_tokens)


def run_name(rank: int, learning_rate: float) -> str:
    return f"r{rank}-lr{learning_rate:g}"


@dataclass(frozen=True)
class Phase:
    """One timed command of a pipeline; `command` may be a callable, called when the phase starts (an evaluation
    whose command names the adapters the training phases wrote)."""

    name: str
    command: list[str] | Callable[[], list[str]]
    cwd: Path | None = None

    def argv(self) -> list[str]:
        return self.command() if callable(self.command) else self.command


@dataclass
class Outcome:
    """One target of the sweep: a run's adapter (rank, learning rate) or the base (both None)."""

    name: str
    rank: int | None = None
    learning_rate: float | None = None
    final_loss: float | None = None
    accuracy: float | None = None


@dataclass
class SweepResult:
    """One repeat of one tool's whole pipeline: wall from the first command's start to the last score on disk,
    the phases it took, and every target's outcome."""

    tool: str
    version: str
    repeat: int
    wall_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)  # phase name -> its wall seconds
    peak_pss_mib: float | None = None  # the highest tree PSS of any phase (they run one after the other)
    outcomes: list[Outcome] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    notes: str = ""  # how the tool ran: packing, threads, what it could not do
    error: str | None = None
