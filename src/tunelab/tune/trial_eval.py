"""A trained trial's evaluation when the objective is an eval task's metric: one job on the sweep's executor on the
trial's last checkpoint, followed again after a kill. `python -m tunelab.tune.trial_eval RUN_DIR TASK` is the job."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.evaluate.objective import Objective
from tunelab.evaluate.passes import evaluate_runs
from tunelab.execute.executor import Executor, JobKind
from tunelab.fsutil import atomic_write_json, read_json
from tunelab.rundir.config import RunConfig, load_run_config
from tunelab.rundir.tuned import EVAL_JOB, JOB_FILE

DEFAULT_EVAL_LIMIT = "01:00:00"  # a trial's evaluation job's time limit when the plan predicted none


@dataclass(frozen=True)
class TrialEvaluation:
    """How the search evaluates its trials: the objective, and each job's time limit (the combination run's)."""

    objective: Objective
    time_limit: str = DEFAULT_EVAL_LIMIT

    @classmethod
    def of(cls, objective: Objective, run: RunConfig) -> TrialEvaluation | None:
        """None where the objective needs no evaluation (val_loss)."""
        if not objective.evaluated:
            return None
        limit = run.estimate.eval_slurm_time_limit if run.estimate is not None else None
        return cls(objective, limit or DEFAULT_EVAL_LIMIT)


def record_job(ex: Executor, run_dir: Path, key: str, job: str) -> None:
    """Add a job to the trial's tune_job.json (a new training job drops an evaluation of the one before)."""
    record = read_json(run_dir / JOB_FILE, default=None)
    record = record if isinstance(record, dict) and record.get("executor") == ex.name else {"executor": ex.name}
    if key == "job":
        record.pop(EVAL_JOB, None)
    atomic_write_json(run_dir / JOB_FILE, {**record, key: job})


def recorded_job(ex: Executor, run_dir: Path, key: str = "job") -> str | None:
    """The job a previous search started for this trial (`key`), while the executor still sees it active."""
    record = read_json(run_dir / JOB_FILE, default=None)
    if not isinstance(record, dict) or record.get("executor") != ex.name or not record.get(key):
        return None
    job = str(record[key])
    info = (ex.poll([job]) or {}).get(job)
    return job if info is not None and not info.ended else None


def eval_command(cfg: RunConfig, task: str) -> str:
    python = f'"${{TUNELAB_PYTHON:-{sys.executable}}}"'
    return f"{python} -m tunelab.tune.trial_eval {shlex.quote(str(cfg.run_dir))} {shlex.quote(task)}"


def evaluate_trial(ex: Executor, cfg: RunConfig, how: TrialEvaluation, interval: float) -> tuple[float | None, str]:
    """The trial's objective from its evaluation job (started or followed), and what went wrong without one."""
    task = how.objective.task
    assert task is not None  # an evaluated objective
    value = how.objective.read(cfg.run_dir)
    if value is not None:  # evaluated before a search was killed
        return value, ""
    job = recorded_job(ex, cfg.run_dir, EVAL_JOB)
    if job is None:
        script = ex.side_job_script(cfg, JobKind.EVAL, cfg.run_dir, eval_command(cfg, task), how.time_limit)
        job = ex.submit(script)
        record_job(ex, cfg.run_dir, EVAL_JOB, job)
    while True:
        info = (ex.poll([job]) or {}).get(job)
        if info is not None and info.ended:
            break
        time.sleep(interval)
    value = how.objective.read(cfg.run_dir)
    if value is not None:
        return value, ""
    tail = " | ".join(ex.output(cfg.run_dir, JobKind.EVAL, job).strip().splitlines()[-3:])
    return None, f"evaluation job {job} left no {how.objective.name}" + (f": {tail}" if tail else "")


def main(argv: list[str] | None = None) -> int:
    """The evaluation job: the trial's last checkpoint on one task, scores beside it (no ledger)."""
    run_dir, task = (argv if argv is not None else sys.argv[1:])[:2]
    evaluate_runs([load_run_config(Path(run_dir))], "last", tasks=[task])
    return 0


if __name__ == "__main__":
    sys.exit(main())
