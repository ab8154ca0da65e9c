"""A warm process: training jobs started one after another on one share of this machine (the learning-rate search's
trials, tune/search.py) forked from a process that imported the training stack once, so that a job's start is its
model and data, not a fresh interpreter importing torch, transformers, PEFT and TRL again (2.7 s of a trial's 3.1–3.6 s
start-up on the CPU of docs/benchmarks.md, paid by every trial).

    python -m tunelab.train.warm      (started by the local executor: execute/warm_jobs.py)

Nothing but imports runs here before a fork: no torch op, no Python thread but the main one (its "ready" says how
many), so OpenMP's pool and every worker start in the child — as a DataLoader worker is forked from a process that
imported torch. Each job is a child in a session of its own (its pid its process group, as a job the local executor starts
with bash), its output appended to the run's log and its directory the run's: the executor follows it, stops it
(SIGTERM to the group) and reads how it ended as it would any job's. The child then does what `python -m
tunelab.train.job run.yaml` does after its imports (train/job.py `run_job`).

One warm process serves every lane of a sweep or search: a request names the variables of the job's environment that
this process was not started with (execute/warm_jobs.py PER_JOB_ENV: its share of the cores, CPUS_ENV, and two that
libraries set as they run; null: unset), which the child takes before it sets its threads and pins itself, as a job
started with that environment would.

It also runs the plan's own measuring job (the training loop's cost, train/loop_cost.py) when the process that plans
holds a warm process already (a search's, started before its plan): forked from here, it skips the third import of
the stack a cold plan on two cores would otherwise pay beside the plan's and this one's (forecast/loopjob.py).

The protocol is JSON lines. In, on stdin: {"run_yaml": PATH, "log": PATH, "env": {NAME: VALUE or null}} (a training
job), or {"module": NAME, "argv": [ARG ...], "log": PATH, "environ": {NAME: VALUE}} (one of MODULES run as `python -m
NAME ARG ...` with exactly that environment). Out, on the stdout it was started with: {"ready": PID, "threads": N,
"imports_s": S} once imported; {"started": PID} or {"error": WHY} per request; {"exited": PID, "code": C} when a
child ends (C negative: the signal that ended it, as subprocess's returncode). It ends when its stdin closes; jobs
running then go on, as a job started by bash would."""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

REAP_S = 0.1  # how often ended children are looked for between requests
SESSION_WAIT_S = 5.0  # a forked child's setsid, at most
MODULES = frozenset({"tunelab.train.loop_cost"})  # what a "module" request may run: the plan's measuring job


class Warm:
    """The warm process's loop: requests in, children forked and reaped, every event one line out."""

    def __init__(self, requests: int, replies: int):
        self.requests, self.replies = requests, replies
        self.children: set[int] = set()
        self.pending = b""

    def send(self, **message: object) -> None:
        os.write(self.replies, (json.dumps(message) + "\n").encode())

    def serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.requests], [], [], REAP_S)
            if ready:
                chunk = os.read(self.requests, 65536)
                if not chunk:  # the executor closed its end: done (running jobs go on)
                    return
                self.pending += chunk
                while b"\n" in self.pending:
                    line, self.pending = self.pending.split(b"\n", 1)
                    self.handle(line)
            self.reap()

    def handle(self, line: bytes) -> None:
        job: ModuleJob | tuple[Path, dict[str, str | None]]
        try:
            request = json.loads(line)
            log = Path(request["log"])
            if "module" in request:
                job = _module_job(request)
            else:
                run_yaml, env = Path(request["run_yaml"]), request.get("env") or {}
                if not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in env.items()):
                    raise TypeError(f"env is {env!r}, not names and values")
                job = (run_yaml, env)
        except (ValueError, KeyError, TypeError) as exc:
            self.send(error=f"not a request: {exc}")
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            self.send(error=f"fork failed: {exc}")
            return
        if pid == 0:
            if isinstance(job, ModuleJob):
                _module_child(job, log, (self.requests, self.replies))
            else:
                _child(job[0], log, job[1], (self.requests, self.replies))
        self.children.add(pid)
        _await_session(pid)
        self.send(started=pid)

    def reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.children.discard(pid)
                continue
            if done:
                self.children.discard(pid)
                self.send(exited=pid, code=os.waitstatus_to_exitcode(status))


def _await_session(pid: int) -> None:
    """Return once the child leads its own session (or has ended): from then on, the executor's SIGTERM to its process
    group reaches it."""
    end = time.monotonic() + SESSION_WAIT_S
    while time.monotonic() < end:
        try:
            if os.getpgid(pid) == pid:
                return
        except ProcessLookupError:
            return
        time.sleep(0.001)


class ModuleJob(NamedTuple):
    """A "module" request: one of MODULES, its arguments, and the whole environment it runs with."""

    module: str
    argv: list[str]
    environ: dict[str, str]


def _module_job(request: dict[str, Any]) -> ModuleJob:
    module, argv, environ = request["module"], request.get("argv") or [], request.get("environ")
    if module not in MODULES:
        raise ValueError(f"{module!r} is not one of {sorted(MODULES)}")
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise TypeError(f"argv is {argv!r}, not strings")
    if not (isinstance(environ, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in environ.items())):
        raise TypeError(f"environ is {environ!r}, not names and values")
    return ModuleJob(module, argv, environ)


def _become_job(log: Path, pipes: tuple[int, int]) -> None:
    """What every forked child does first: its own session, a fresh interpreter's signals, `log` as its stdout and
    stderr, nothing on stdin, none of the protocol's descriptors."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter: KeyboardInterrupt
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until the trainer's handler saves and stops
    for fd in pipes:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)


def _module_child(job: ModuleJob, log: Path, pipes: tuple[int, int]) -> NoReturn:
    """The forked `python -m MODULE ARGV` with exactly `job.environ`."""

    def body() -> int:
        os.environ.clear()
        os.environ.update(job.environ)
        print(f"[tunelab] {job.module} started warm: forked from process {os.getppid()}", flush=True)
        sys.argv = [job.module, *job.argv]
        runpy.run_module(job.module, run_name="__main__", alter_sys=True)
        return 0

    _run_forked(log, pipes, body)


def _run_forked(log: Path, pipes: tuple[int, int], body: Callable[[], int]) -> NoReturn:
    """Every forked child: a job of its own (_become_job) that says it started warm — its start-up the warm
    process's imports, not its own age; the warm process's fit to the load while it imported not its own —, then
    `body`, whose result, or SystemExit's code as a fresh interpreter's, is its exit status (anything else: in its
    log, and 1)."""
    code = 1
    try:
        _become_job(log, pipes)
        from tunelab.host import adapt
        from tunelab.train.metrics import mark_started_warm

        mark_started_warm(_IMPORTS_S[0] if _IMPORTS_S else None)  # summary.json says so (and what was skipped)
        adapt.forget()
        code = body()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 — whatever ended the job is in its log, and its exit status says so
        traceback.print_exc()
    finally:
        _flush_and_exit(code)


def _flush_and_exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _child(run_yaml: Path, log: Path, env: dict[str, str | None], pipes: tuple[int, int]) -> NoReturn:
    """The forked job: the run's log as stdout and stderr, the run's directory, its own variables (`env`: its share of
    the cores among them; None: unset), then the job."""

    def body() -> int:
        os.chdir(run_yaml.parent)
        print(f"[tunelab train] started warm: forked from process {os.getppid()}, which imported the training "
              "stack once for every job on this share", flush=True)
        from tunelab.host import threads
        from tunelab.train.distributed import local_processes
        from tunelab.train.job import run_job

        for name, value in env.items():  # as job.sh would have been started: threads.apply pins to its share
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        threads.apply(threads.decide(local_processes()))  # its own threads, torch's set here
        return run_job(run_yaml)

    _run_forked(log, pipes, body)


_IMPORTS_S: list[float | None] = []  # this process's age once the stack was imported: what each child skips


def main() -> int:
    """Import the training stack, say ready, then serve requests until stdin closes."""
    replies = os.dup(1)  # the protocol's own descriptor: whatever an import prints goes to stderr, not into it
    os.dup2(2, 1)
    from tunelab.train.job import import_training_stack
    from tunelab.train.metrics import process_age_s

    import_training_stack()
    _IMPORTS_S[:] = [process_age_s()]
    warm = Warm(0, replies)
    warm.send(ready=os.getpid(), threads=threading.active_count(), imports_s=_IMPORTS_S[0])
    warm.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
