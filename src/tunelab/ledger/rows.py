"""The ledger's rows as typed records, one class per table (store.py reads and writes them)."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.rundir.layout import RunState
from tunelab.stats.records import Interval


@dataclass(frozen=True)
class RunRow:
    """Table runs: one run as its directory read when last ingested."""

    name: str
    kind: str  # finetune | control | eval_only
    experiment: str
    model: str
    dataset: str
    factors: str  # JSON of run.yaml's factors
    run_dir: str
    config: str  # run.yaml, as JSON
    state: RunState  # stored as its value; read back as the member
    attempt: int | None
    steps: int | None
    final_loss: float | None
    best_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    duration_s: float | None
    tokens_per_s: float | None
    nonpad_fraction: float | None
    peak_memory_gib: float | None
    memory_kind: str | None
    error: str | None
    summary: str | None  # summary.json, as JSON
    updated_at: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", RunState(self.state))  # the ledger's TEXT column -> the member


@dataclass(frozen=True, kw_only=True)
class EvaluatedTask:
    """One task evaluated on one checkpoint of a run: what every eval row of it shares."""

    label: str  # epoch_N | base | checkpoint
    epoch: int | None = None
    task: str
    builtin: str | None = None
    file: str | None = None  # a user's task file
    dataset: str | None = None
    split: str | None = None
    samples: int | None = None
    log_path: str | None = None
    evaluated_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class EvalRow(EvaluatedTask):
    """Table evals: one metric of one task on one checkpoint of a run."""

    run: str
    metric: str
    value: float | None  # None: undefined on these samples
    is_primary: bool  # the task's headline metric
    greater_is_better: bool
    kind: str | None
    duration_s: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: str | None
    ci_seed: int | None
    ci_resamples: int | None

    @property
    def interval(self) -> Interval | None:
        """The metric's 95 % interval (None where none was computed)."""
        if self.ci_low is None or self.ci_high is None or self.ci_method is None:
            return None
        return Interval(low=self.ci_low, high=self.ci_high, method=self.ci_method, seed=self.ci_seed,
                        resamples=self.ci_resamples)
