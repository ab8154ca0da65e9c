"""What a learning-rate search leaves under the experiment (`tunelab tune`), the contract between the search that
writes it and the scaffold and status that read it:

<experiment>/tune/
  journal.log                 Optuna's journal: every combination's study (survives a kill; the search resumes it)
  best.json                   {combination: TunedRate}: the rate each combination's runs train at
  <combination>/trial-N/      a trial: a run directory of its own (run.yaml, status.json, metrics.jsonl, …)
  <combination>/trial-N/pruned.json   Pruned: the pruner stopped the trial there
  <combination>/trial-N/tune_job.json {executor, job, eval_job}: the trial's training job and (an eval metric as
                                      objective) its evaluation job, so a search started again follows them
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.fsutil import atomic_write_json, read_json
from tunelab.rundir.layout import EVAL_DIR, SCORES_FILE
from tunelab.rundir.record import JsonRecord
from tunelab.spec import ExperimentSpec
from tunelab.spec.tune import combination_name

if TYPE_CHECKING:
    from tunelab.rundir.config import RunConfig

TUNE_DIR = "tune"
JOURNAL_FILE = "journal.log"
BEST_FILE = "best.json"
PRUNED_FILE = "pruned.json"
TRIAL_PREFIX = "trial-"
JOB_FILE = "tune_job.json"
EVAL_JOB = "eval_job"  # tune_job.json's key of the evaluation job


def tune_dir(experiment_dir: str | Path) -> Path:
    return Path(experiment_dir) / TUNE_DIR


def trial_dir(experiment_dir: str | Path, combination: str, number: int) -> Path:
    return tune_dir(experiment_dir) / combination / f"{TRIAL_PREFIX}{number}"


@dataclass(kw_only=True)
class TunedRate(JsonRecord):
    """The rate a combination's search chose, with what it rests on (written into its runs' run.yaml)."""

    combination: str
    learning_rate: float
    objective: str
    value: float  # the best trial's objective
    trial: int  # the best trial's number
    trials: int  # the trials the search ran (pruned and failed ones included)
    pruned: int = 0

    @property
    def source(self) -> str:
        """The source string run.yaml's `tuned` carries."""
        objective = "val loss" if self.objective == "val_loss" else self.objective
        return (f"tuned: best of {self.trials} trials, {objective} {self.value:.4g} at {self.learning_rate:.3g}, "
                f"trial {self.trial}")


@dataclass(kw_only=True)
class Pruned(JsonRecord):
    """pruned.json: the pruner stopped this trial after the validation at `step` (its objective there: `value`);
    `stopped`: its job was still training and was cancelled (False: it had ended before that validation was read)."""

    step: int
    value: float
    at: str
    stopped: bool = True


def read_best(experiment_dir: str | Path) -> dict[str, TunedRate]:
    """tune/best.json by combination ({} before any search finished)."""
    data = read_json(tune_dir(experiment_dir) / BEST_FILE, default=None)
    return {k: TunedRate.from_json(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_best(experiment_dir: str | Path, best: dict[str, TunedRate]) -> Path:
    return atomic_write_json(tune_dir(experiment_dir) / BEST_FILE, {k: v.to_json() for k, v in sorted(best.items())})


def evaluating(run_dir: str | Path) -> bool:
    """Whether the trial's evaluation job was started and has written no scores yet (status shows it)."""
    record = read_json(Path(run_dir) / JOB_FILE, default=None)
    return isinstance(record, dict) and bool(record.get(EVAL_JOB)) and \
        not any((Path(run_dir) / EVAL_DIR).glob(f"*/*/{SCORES_FILE}"))


def read_pruned(run_dir: str | Path) -> Pruned | None:
    data = read_json(Path(run_dir) / PRUNED_FILE, default=None)
    return Pruned.from_json(data) if isinstance(data, dict) else None


def write_pruned(run_dir: str | Path, pruned: Pruned) -> Path:
    return atomic_write_json(Path(run_dir) / PRUNED_FILE, pruned.to_json())


def combination_runs(spec: ExperimentSpec, runs: list[RunConfig]) -> dict[str, list[RunConfig]]:
    """The fine-tuned runs by their `tune.per` combination, in design order: the one grouping rule of the search."""
    if spec.tune is None:
        return {}
    per = spec.tune.per_factors(spec.factors)
    groups: dict[str, list[RunConfig]] = {}
    for cfg in runs:
        if cfg.kind == "finetune" and cfg.default_lr_of is None:
            groups.setdefault(combination_name(cfg.factors, per), []).append(cfg)
    return groups
