"""What a sweep shows while it runs: live progress bars when its jobs run here, one line per event when a scheduler runs
them; every line through tunelab.console, values printed as plain text."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

from tunelab.console import markup, progress_columns, say
from tunelab.execute.executor import Executor, JobKind
from tunelab.execute.failures import COMPLETED
from tunelab.execute.jobs import JobRow
from tunelab.rundir import read_status
from tunelab.rundir.config import RunConfig


class SweepView:
    """One line per event."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def say(self, template: str, *values: Any) -> None:
        """One line: the template's markup styles it, the values stay plain text (tunelab.console.say)."""
        say(template, *values, console=self.console)

    @contextlib.contextmanager
    def live(self, runs: int) -> Iterator[None]:
        yield

    def submitted(self, cfg: RunConfig, kind: JobKind, job_id: str, dep: str | None, reason: str, where: str) -> None:
        dep_txt = f" (afterok:{dep})" if dep else ""
        self.say("submitted {} {} job {}{}: {}", cfg.name, kind, job_id, dep_txt, reason)

    def ended(self, job: JobRow) -> None:
        self.say("{} {} job {}: {}", job.run, job.kind, job.job_id, job.detail)

    def retrying(self, cfg: RunConfig) -> None:
        pass

    def tick(self, runs: dict[str, RunConfig]) -> None:
        pass


class BarsView(SweepView):
    """A bar for the sweep and one per run started, filled from each run's status.json."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.progress: Progress | None = None
        self.sweep_task: TaskID | None = None
        self.tasks: dict[str, TaskID] = {}
        self.run_dirs: dict[str, str] = {}  # each started run's directory: its last status.json fills its bar

    @contextlib.contextmanager
    def live(self, runs: int) -> Iterator[None]:
        with Progress(*progress_columns(), console=self.console, transient=False) as progress:
            self.progress = progress
            self.sweep_task = progress.add_task(f"sweep ({runs} runs)", total=runs)
            yield

    def submitted(self, cfg: RunConfig, kind: JobKind, job_id: str, dep: str | None, reason: str, where: str) -> None:
        if reason != "first submission" and not reason.startswith("attempt "):
            self.say("{}: {}", cfg.name, reason)
        if self.progress is not None:
            self.run_dirs[cfg.name] = str(cfg.run_dir)
            self.tasks[cfg.name] = self.progress.add_task(f"  {cfg.name}" + (f" [{where}]" if where else ""),
                                                          total=None)

    def ended(self, job: JobRow) -> None:
        task = self.tasks.pop(job.run, None)
        if self.progress is None or task is None or job.kind != JobKind.TRAIN:
            return
        self._fill(task, job.run)  # the last tick saw the last logged step, not the step the job ended at
        if job.failure == COMPLETED:
            mark = markup("  {}: [green]completed[/green]", job.run)
        elif job.exit == 0 and job.detail:  # exited 0 yet not complete: what is missing, not "exit 0"
            mark = markup("  {}: [red]{} ({})[/red]", job.run, job.failure, job.detail)
        else:
            mark = markup("  {}: [red]{} (exit {})[/red]", job.run, job.failure,
                          job.exit if job.exit is not None else "?")
        self.progress.update(task, description=mark)  # type: ignore[arg-type]  # a Text: progress_columns
        if self.sweep_task is not None:
            self.progress.advance(self.sweep_task)

    def retrying(self, cfg: RunConfig) -> None:
        if self.progress is not None and self.sweep_task is not None:
            total = self.progress.tasks[self.sweep_task].total or 0
            self.progress.update(self.sweep_task, total=total + 1)

    def tick(self, runs: dict[str, RunConfig]) -> None:
        if self.progress is None:
            return
        for name, task in self.tasks.items():
            self._fill(task, name)

    def _fill(self, task: TaskID, run: str) -> None:
        """The run's bar at the step its status.json says (a completed run's: its last step)."""
        status = read_status(self.run_dirs[run])
        if self.progress is not None and status.total_steps:
            self.progress.update(task, total=status.total_steps, completed=status.step or 0)


def view_for(ex: Executor, console: Console) -> SweepView:
    """Bars where the sweep's jobs run here; lines where a scheduler runs them."""
    return SweepView(console) if ex.detached else BarsView(console)
