"""Processes of their own without paying the imports again: a child forked from a process that has imported
torch, transformers and PEFT once (a fresh Python process spends ~10 s CPU importing them, most of what a
smoke's tiny job costs). The child's RSS and ru_maxrss are its own, and so is whatever it does lazily the first
time (a first step's imports), so variants measured in forked children start alike.

Smoke modes run their scaffolded training jobs this way (`run_job`): what job.sh runs (`python -m
tunelab.train.job run.yaml` from the run's directory, HF_HUB_OFFLINE=1, output in train.log), in a fork; the
full benchmarks run job.sh itself, interpreter start and imports included. tests/e2e/test_benchmark_smoke.py
runs the benchmark scripts themselves the same way (`run_python` in a `Forks` queue, two at a time): what
`python benchmarks/X.py --smoke` does, forked from the test process after its imports.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Child:
    """A forked child: its exit status (negative: killed by that signal; None: running, or killed at its
    timeout) and the CPU seconds it and the children it waited for used."""

    pid: int
    deadline: float
    code: int | None = None
    cpu_s: float = 0.0
    done: bool = False
    timed_out: bool = False


def start(fn: Callable[..., Any], *args: Any, out: Path | None = None, err: Path | None = None,
          timeout: float = float("inf")) -> Child:
    """fn(*args) in a forked child that exits with fn's status as a script's would (None: 0, an int: itself,
    SystemExit's code; an exception: its traceback on stderr, 1) and never runs this process's exit handlers.
    out/err: the child's stdout and stderr go to these files (sys.stdout/stderr and fds 1 and 2 both)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # what tokenizers falls back to in a fork anyway
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return Child(pid, time.monotonic() + timeout)
    code = 1
    try:
        if out is not None and err is not None:
            os.setsid()  # a session of its own: killed whole at its timeout, grandchildren included
            _streams_to(out, err)
        code = _status(fn(*args))
    except SystemExit as exit_:
        code = _status(exit_.code)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _status(value: Any) -> int:
    """The exit status Python gives `sys.exit(value)`."""
    if value is None or isinstance(value, int):
        return value or 0
    print(value, file=sys.stderr)
    return 1


def _streams_to(out: Path, err: Path) -> None:
    """This (forked) process's stdout and stderr into the files (one file when out is err), as a fresh process
    started with them would have: fds 1 and 2, new sys.stdout/sys.stderr, the log handlers that wrote to the old
    streams rebound, and the root logger's other handlers dropped."""
    root = logging.getLogger()
    loggers = [root, *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))]
    files = {path: open(path, "wb") for path in (out, err)}
    for path, fd, name in ((out, 1, "stdout"), (err, 2, "stderr")):
        os.dup2(files[path].fileno(), fd)
        old, new = getattr(sys, name), open(fd, "w", encoding="utf-8", closefd=False)
        setattr(sys, name, new)
        for handler in (h for x in loggers for h in x.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)
    for f in files.values():
        f.close()
    # a fresh process's root logger has no handlers: those of this one (a test runner's log capture, inspect-ai's
    # handler once an evaluation ran here) would take the child's records away from its stderr
    for handler in [h for h in root.handlers
                    if not (isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr))]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def poll(child: Child) -> bool:
    """Whether the child has ended (reaped here), killing its session once past its deadline."""
    if child.done:
        return True
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if pid == 0 and time.monotonic() > child.deadline:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:  # not (yet) a session of its own
            os.kill(child.pid, signal.SIGKILL)
        pid, status, usage = os.wait4(child.pid, 0)
        child.timed_out = True
    if pid == 0:
        return False
    child.done, child.cpu_s = True, usage.ru_utime + usage.ru_stime
    child.code = None if child.timed_out else os.waitstatus_to_exitcode(status)
    return True


def wait(child: Child) -> Child:
    while not poll(child):
        time.sleep(0.05)
    return child


class Forks:
    """Children started in the order they are added, at most `parallel` at a time, all forked from the calling
    (main) thread: `result` waits for one and starts the next ones as others end."""

    def __init__(self, parallel: int) -> None:
        self.parallel = parallel
        self.queued: dict[str, tuple[Callable[..., Any], tuple, dict[str, Any]]] = {}
        self.children: dict[str, Child] = {}

    def add(self, key: str, fn: Callable[..., Any], *args: Any, **how: Any) -> None:
        self.queued[key] = (fn, args, how)
        self._fill()

    def _fill(self) -> None:
        while self.queued and sum(not c.done for c in self.children.values()) < self.parallel:
            key = next(iter(self.queued))
            fn, args, how = self.queued.pop(key)
            self.children[key] = start(fn, *args, **how)

    def result(self, key: str) -> Child:
        while key in self.queued or not poll(self.children[key]):
            ended = [c for c in self.children.values() if not c.done and poll(c)]  # every running one polled
            if ended:
                self._fill()
            else:
                time.sleep(0.05)
        self._fill()
        return self.children[key]

    def close(self) -> None:
        """Drop the queued children and kill the running ones."""
        self.queued.clear()
        for child in self.children.values():
            if not child.done:
                child.deadline = 0.0
                poll(child)


def run_python(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    """What `python ARGV...` does from cwd with env (ARGV: a script and its arguments, or -m MODULE and its), in
    this (forked) process: run as __main__, the script's directory (-m: cwd) first on sys.path. torch, if imported
    already, takes OMP_NUM_THREADS as it would at import."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if "torch" in sys.modules and env.get("OMP_NUM_THREADS"):
        sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))
    if argv[0] == "-m":
        sys.argv = argv[1:]  # run_module puts the module's file in argv[0]
        sys.path.insert(0, str(cwd))
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, str(Path(argv[0]).resolve().parent))
        runpy.run_path(argv[0], run_name="__main__")


def _send(read: int, write: int, fn: Callable[..., Any], *args: Any) -> None:
    os.close(read)
    with os.fdopen(write, "w") as pipe:
        pipe.write(json.dumps(fn(*args)))


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a forked child, its JSON-able result sent back through a pipe; SystemExit with the exit
    status when the child fails (its traceback on its stderr)."""
    read, write = os.pipe()
    child = start(_send, read, write, fn, *args)
    os.close(write)
    with os.fdopen(read) as pipe:
        sent = pipe.read()
    code = wait(child).code
    if code != 0 or not sent:
        raise SystemExit(f"{fn.__name__} failed in its process (exit {code})")
    return json.loads(sent)


def preload_training() -> None:
    """What a training job imports (tunelab.train.TRAINING_STACK), imported here once (before forking its jobs)."""
    from tunelab.host.startup import import_stack
    from tunelab.train import TRAINING_STACK

    import_stack("tunelab.train.job", *TRAINING_STACK)


def _job(run_dir: str) -> int:
    from tunelab.train.job import main

    os.chdir(run_dir)
    os.environ["HF_HUB_OFFLINE"] = "1"
    with open("train.log", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    code = main(["run.yaml"])
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def run_job(run_dir: Path, fork: bool) -> None:
    """The run's training job, output in its train.log: its job.sh (fork False), or what job.sh runs in a forked
    child (fork True: the imports done here first, once; a caller timing its jobs calls preload_training() before
    the first so that none of them counts them). Raises unless it exits 0."""
    if not fork:
        with open(run_dir / "train.log", "w") as log:
            subprocess.run(["bash", str(run_dir / "job.sh")], stdout=log, stderr=subprocess.STDOUT, check=True)
        return
    preload_training()  # imported modules are kept: only the first call pays
    code = in_child(_job, str(run_dir))
    if code != 0:
        raise SystemExit(f"training job of {run_dir} exited {code} (see its train.log)")
