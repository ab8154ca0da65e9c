"""Submitting a run's jobs: its training job, then its evaluation job with afterok, throttled
(resources.slurm.max_queued) and staggered (submit_delay_s); every job id goes to the ledger.

The throttle counts this experiment's queued and running jobs after a refresh (execute/refresh.py), so
a job that ended — even one Slurm has already forgotten, or while sacct is down — stops counting, and
a sweep larger than max_queued always moves on.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from tunelab import ledger
from tunelab.console import say
from tunelab.errors import TunelabError
from tunelab.execute.executor import Executor
from tunelab.execute.jobs import all_jobs, is_active
from tunelab.execute.refresh import refresh
from tunelab.execute.slurm_jobs import EVAL_SCRIPT, TRAIN_SCRIPT, slurm_settings, train_time_limit, write_slurm_scripts
from tunelab.runconfig import RunConfig
from tunelab.train import status as st

UNREACHABLE_S = 600.0  # a scheduler that has not answered for this long ends --wait and the throttle


def check_reachable(ex: Executor) -> None:
    """Raise when the scheduler has not answered for UNREACHABLE_S (instead of waiting forever)."""
    since = getattr(ex, "unanswered_since", None)
    if since is not None and time.monotonic() - since > UNREACHABLE_S:
        raise TunelabError(f"{ex.name}: the scheduler has not answered for {UNREACHABLE_S:.0f} s "
                           f"({getattr(ex, 'last_error', '') or 'no answer'}); jobs already submitted keep "
                           "running: `tunelab run` again later follows them")


class Submitter:
    """sbatch with throttling and staggering; records each job in the ledger."""

    def __init__(self, exp: Path, ex: Executor, runs: dict[str, RunConfig], console: Console,
                 dry_run: bool = False):
        self.exp, self.ex, self.runs, self.console, self.dry_run = exp, ex, runs, console, dry_run
        self.submitted: list[dict] = []
        self._last = 0.0

    def active_count(self) -> int:
        """This experiment's jobs queued or running on this executor, after a refresh (a node job holding
        several runs' rows is one job)."""
        refresh(self.exp, self.runs, {self.ex.name: self.ex})
        return len({j["job_id"] for j in all_jobs(self.exp) if j["executor"] == self.ex.name and is_active(j)})

    def _throttle(self, cfg: RunConfig, needed: int) -> None:
        s = slurm_settings(cfg)
        if self.dry_run:
            return
        waited = False
        while self.active_count() + needed > s.max_queued:
            check_reachable(self.ex)
            if not waited:
                say("[dim]{} jobs queued or running (max_queued): waiting…[/dim]", s.max_queued, console=self.console)
                waited = True
            time.sleep(s.poll_interval_s)
        pause = s.submit_delay_s - (time.monotonic() - self._last)
        if pause > 0:
            time.sleep(pause)

    def submit_run(self, cfg: RunConfig, train: bool, eval_: bool, reason: str,
                   after: str | None = None) -> dict[str, str]:
        """Submit a run's train job and/or eval job (afterok on the train job, or on `after`)."""
        ids: dict[str, str] = {}
        if not self.dry_run:
            write_slurm_scripts(cfg)  # from run.yaml, as it is now
        self._throttle(cfg, int(train) + int(eval_))
        dep = after
        if train:
            ids["train"] = self._one(cfg, "train", TRAIN_SCRIPT, None, reason)
            dep = ids["train"]
        if eval_:
            ids["eval"] = self._one(cfg, "eval", EVAL_SCRIPT, dep, reason)
        return ids

    def submit_array(self, cfgs: list[RunConfig], reason: str) -> list[str]:
        """Submit these runs' training jobs as one job array (execute/slurm_arrays.py; Slurm's %N throttles
        it, not max_queued), then each run's evaluation job with afterok on its own task."""
        from tunelab.execute.slurm_arrays import ARRAY_DIR, array_spec, write_array_script

        spec = array_spec(cfgs)
        if self.dry_run:
            script = Path(cfgs[0].experiment_dir) / ARRAY_DIR / f"train-array-{cfgs[0].name}.sbatch"
            say("would submit: sbatch --parsable --array={} {}  [dim]# {}[/dim]", spec, script, reason,
                console=self.console)
            ids = [f"<array>_{i}" for i in range(len(cfgs))]
        else:
            for cfg in cfgs:
                write_slurm_scripts(cfg)  # each run's eval.sbatch (and job.sbatch for retries)
            array = self.ex.submit(write_array_script(cfgs), array=spec)
            self._last = time.monotonic()
            ids = [f"{array}_{i}" for i in range(len(cfgs))]
            for cfg, job_id in zip(cfgs, ids):
                ledger.record_job(self.exp, run=cfg.name, kind="train", job_id=job_id, attempt=cfg.attempt,
                                  executor=self.ex.name, time_limit=train_time_limit(cfg)[0],
                                  submitted_at=st.now_iso(), state="SUBMITTED", reason=f"{reason} (job array)")
            say("submitted job array {} (--array={}): {}", array, spec,
                ", ".join(f"{c.name} {i}" for c, i in zip(cfgs, ids)), console=self.console)
        for cfg, job_id in zip(cfgs, ids):
            self.submitted.append({"run": cfg.name, "kind": "train", "job_id": job_id, "depends_on": None})
            self._one(cfg, "eval", EVAL_SCRIPT, job_id, reason)
        return ids

    def submit_pack(self, cfgs: list[RunConfig], reason: str) -> str:
        """One node job training and evaluating these runs (execute/slurm_pack.py); each run gets a train and
        an eval row with its id, so the job is polled, judged and cancelled per run like any other."""
        from tunelab.execute.slurm_pack import write_pack_script

        names = ", ".join(c.name for c in cfgs)
        if self.dry_run:
            script = Path(cfgs[0].experiment_dir) / "slurm" / f"node-{cfgs[0].name}.sbatch"
            say("would submit: sbatch --parsable {}  [dim]# node job: {}; {}[/dim]", script, names, reason,
                console=self.console)
            return "<node>"
        for cfg in cfgs:
            write_slurm_scripts(cfg)  # each run's own scripts, for retries as jobs of their own
        self._throttle(cfgs[0], 1)
        job_id = self.ex.submit(write_pack_script(cfgs))
        self._last = time.monotonic()
        for cfg in cfgs:
            for kind in ("train", "eval"):
                ledger.record_job(self.exp, run=cfg.name, kind=kind, job_id=job_id, attempt=cfg.attempt,
                                  executor=self.ex.name, time_limit=train_time_limit(cfg)[0] if kind == "train"
                                  else None, submitted_at=st.now_iso(), state="SUBMITTED",
                                  reason=f"{reason} (node job)")
                self.submitted.append({"run": cfg.name, "kind": kind, "job_id": job_id, "depends_on": None})
        say("submitted node job {} for {} runs: {}", job_id, len(cfgs), names, console=self.console)
        return job_id

    def _one(self, cfg: RunConfig, kind: str, script: str, dep: str | None, reason: str) -> str:
        path = cfg.run_dir / script
        if self.dry_run:
            job_id = f"<{cfg.name}:{kind}>"
            dep_txt = f" --dependency=afterok:{dep} --kill-on-invalid-dep=yes" if dep else ""
            say("would submit: sbatch --parsable{} {}  [dim]# {}[/dim]", dep_txt, path, reason, console=self.console)
        else:
            job_id = self.ex.submit(path, dep)
            self._last = time.monotonic()
            ledger.record_job(self.exp, run=cfg.name, kind=kind, job_id=job_id, attempt=cfg.attempt,
                              executor=self.ex.name, depends_on=dep,
                              time_limit=train_time_limit(cfg)[0] if kind == "train" else None,
                              submitted_at=st.now_iso(), state="SUBMITTED", reason=reason)
            dep_txt = f" (afterok:{dep})" if dep else ""
            say("submitted {} {} job {}{}: {}", cfg.name, kind, job_id, dep_txt, reason, console=self.console)
        self.submitted.append({"run": cfg.name, "kind": kind, "job_id": job_id, "depends_on": dep})
        return job_id
