"""Sweeps started by the server: the same `tunelab run` (or `tune`) as a detached process, so the tool returns at once
and the sweep outlives the server (the lab's jobs do not stop when the assistant disconnects). One at a time per
experiment: a search and its sweep would train the same runs apart."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError

LOG_DIR = ".tunelab-mcp"  # inside the experiment directory
TAIL_LINES = 5


@dataclass
class Sweeps:
    """The background sweeps of this server, by experiment directory (Popen objects, so ended ones are reaped)."""

    running: dict[Path, subprocess.Popen] = field(default_factory=dict)
    logs: dict[Path, Path] = field(default_factory=dict)  # the log of the last command started, by experiment

    def start(self, experiment_dir: Path, runs: list[str], force: bool) -> tuple[int, Path]:
        """Start `python -m tunelab run EXP [--run R ...] [--force]`, its output in EXP/.tunelab-mcp/run.log."""
        args = [a for r in runs for a in ("--run", r)] + (["--force"] if force else [])
        return self.start_command("run", experiment_dir, args)

    def start_command(self, command: str, experiment_dir: Path, args: list[str]) -> tuple[int, Path]:
        """Start `python -m tunelab COMMAND EXP ARGS…`, its output in EXP/.tunelab-mcp/COMMAND.log."""
        if self.alive(experiment_dir):
            raise TunelabError("a sweep or search this server started is still running; follow it with status, or "
                               "cancel it", file=experiment_dir)
        log = experiment_dir / LOG_DIR / f"{command}.log"
        log.parent.mkdir(exist_ok=True)
        args = [sys.executable, "-m", "tunelab", command, str(experiment_dir), *args]
        self.logs[experiment_dir] = log
        with open(log, "wb") as out:  # the child holds its own descriptor; ours closes here
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=experiment_dir, start_new_session=True)
        self.running[experiment_dir] = proc
        return proc.pid, log

    def alive(self, experiment_dir: Path) -> bool:
        proc = self.running.get(experiment_dir)
        return proc is not None and proc.poll() is None

    def tail(self, experiment_dir: Path) -> list[str]:
        """The last lines of the sweep's (or search's) log (why it stopped, when it stopped early)."""
        log = self.logs.get(experiment_dir, experiment_dir / LOG_DIR / "run.log")
        return log.read_text(errors="replace").splitlines()[-TAIL_LINES:] if log.is_file() else []
