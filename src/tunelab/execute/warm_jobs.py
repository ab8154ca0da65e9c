"""The local executor's warm processes (train/warm.py): while a caller keeps them (`LocalExecutor.warm_starts`, the
learning-rate search's trials), a training job is forked from a process that keeps the training stack imported, one
such process for each environment jobs are started with but for PER_JOB_ENV (their lane's share of the cores, CPUS_ENV,
and what libraries set in this process's own environment as it ran), which the forked job takes as it starts — its
share, its threads and pinning —, so one import serves every lane and a process started ahead serves the jobs. The first job
waits for the process's imports, as a fresh job would import; every later one starts at once. A caller that knows it
will start jobs can start that process ahead (`prepare`), so its imports run beside the caller's own work.

A warm process that cannot start, or is gone, is said and the job starts as any other (bash job.sh): nothing is lost
but the time. A job whose warm process ended before it did is followed by its pid as another process would follow it
(its end then read from the run's files)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from tunelab.console import say
from tunelab.host import ahead
from tunelab.host.cores import CPUS_ENV
from tunelab.host.process import alive, proc_start, signal_group

WARM_MODULE = "tunelab.train.warm"
# a job's environment that its warm process is not started with: sent with each job, which takes it before anything
# reads it. Its lane's share of the cores (threads and pinning are set from it in the job), and two variables libraries
# set in the environment of the process that starts the jobs as it runs (threadpoolctl's and scikit-learn's imports,
# torch inductor's cache directory), which would otherwise make a process started before them serve no job
PER_JOB_ENV = (CPUS_ENV, "KMP_DUPLICATE_LIB_OK", "TORCHINDUCTOR_CACHE_DIR")
READY_TIMEOUT_S = 300.0  # a warm process's imports, at most (a loaded machine's first import of the stack)
REPLY_TIMEOUT_S = 30.0  # a fork's reply once imported
POLL_S = 0.02  # how often a module's job forked here is looked at until it ends


class WarmJob:
    """A job forked by a warm process, as the executor follows it: its exit status once the warm process said it
    (None before), and `lost` once neither it nor its warm process runs any more with its status unsaid."""

    def __init__(self, pid: int, source: WarmProcess):
        self.pid, self.source = pid, source
        self.start = proc_start(pid)  # a pid reused by another process later is not this job

    def poll(self) -> int | None:
        return self.source.codes.get(self.pid)

    @property
    def lost(self) -> bool:
        return self.poll() is None and not self.source.running and not alive(self.pid, self.start)


class WarmProcess:
    """One warm process and the thread reading its replies."""

    def __init__(self, env: dict[str, str]):
        self.codes: dict[int, int] = {}
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ready = threading.Event()
        ahead.importing(self.ready)  # a timing in this process waits for its imports (host/ahead.py)
        self.threads: int | None = None
        self.imports_s: float | None = None  # its own account, once ready
        self.refused = ""  # its reply where it started no job
        self.tail = ""  # its stderr's last line, kept when it is closed
        self.lock = threading.Lock()
        self.errors: IO[str] = tempfile.TemporaryFile("w+", prefix="tunelab-warm-")  # its stderr: why it failed
        python = os.environ.get("TUNELAB_PYTHON") or sys.executable  # job.sh's interpreter
        self.proc = subprocess.Popen([python, "-m", WARM_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errors, env=env, start_new_session=True)
        self.reader = threading.Thread(target=self._read, name="tunelab-warm-replies", daemon=True)
        self.reader.start()
        if python == sys.executable:  # the plan's measuring job may fork from it: the same interpreter and stack
            ahead.offer(self)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "exited" in message:
                self.codes[int(message["exited"])] = int(message["code"])
            elif "ready" in message:
                self.threads = int(message.get("threads", 0))
                imports_s = message.get("imports_s")
                self.imports_s = float(imports_s) if isinstance(imports_s, (int, float)) else None
                self.ready.set()
            else:
                self.replies.put(message)
        self.ready.set()  # gone: nobody waits for it
        self.replies.put({"error": "the warm process ended"})

    def why_gone(self) -> str:
        """Why it started no job: its stderr's last line, else what it replied, else that it gave no reply."""
        return self._stderr_tail() or self.refused or "it gave no reply in time and was ended"

    def _stderr_tail(self) -> str:
        if self.errors.closed:
            return self.tail
        self.errors.seek(0)
        lines = [line for line in self.errors.read().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def start(self, run_yaml: Path, log: Path, env: dict[str, str] | None = None) -> WarmJob | None:
        """Fork the job of `run_yaml`, its output appended to `log`, with `env`'s PER_JOB_ENV (None: unset); None
        where this process could not (said)."""
        pid = self._fork({"run_yaml": str(run_yaml), "log": str(log),
                          "env": {k: (env or {}).get(k) for k in PER_JOB_ENV}})
        return None if pid is None else WarmJob(pid, self)

    def run_module(self, module: str, argv: list[str], log: Path, environ: dict[str, str],
                   timeout_s: float) -> int | None:
        """`python -m module *argv` forked from this process with exactly `environ` (train/warm.py MODULES), its
        output to `log`: its exit status once it ends; None where it could not start, or was lost, or ran past
        `timeout_s` (then killed). Interrupted here, it is stopped too: nothing runs on unfollowed."""
        pid = self._fork({"module": module, "argv": argv, "log": str(log), "environ": environ})
        if pid is None:
            return None
        job, end = WarmJob(pid, self), time.monotonic() + timeout_s
        try:
            while (code := job.poll()) is None:
                if job.lost or time.monotonic() > end:
                    signal_group(pid, signal.SIGKILL)
                    return None
                time.sleep(POLL_S)
        except BaseException:
            signal_group(pid, signal.SIGKILL)
            raise
        return code

    def _fork(self, request: dict[str, Any]) -> int | None:
        """Send one request; the forked child's pid, or None where this process could not fork it."""
        with self.lock:
            if not self.ready.wait(READY_TIMEOUT_S) and self.running:  # never ready: ended, as one that never replied
                self.close(kill=True)
            if not self.running:
                return None
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                self.proc.stdin.flush()
                reply = self.replies.get(timeout=REPLY_TIMEOUT_S)
            except (OSError, queue.Empty):  # gone, or no reply in time: ended, so no late fork trains beside bash's job
                self.close(kill=True)
                self._stop_unfollowed()
                return None
            except BaseException:  # Ctrl-C between the request and its reply: no job may go on unfollowed
                self.close(kill=True)
                self._stop_unfollowed()
                raise
        if "started" not in reply:
            self.refused = str(reply.get("error", reply))
            return None
        return int(reply["started"])

    def _stop_unfollowed(self) -> None:
        """A job forked just before this process was killed, its reply never taken: stopped (SIGTERM to its group,
        as a trial's job is stopped on Ctrl-C: it saves and ends)."""
        self.reader.join(timeout=5)  # every reply written before the kill read
        while not self.replies.empty():
            reply = self.replies.get_nowait()
            if "started" in reply:
                signal_group(int(reply["started"]), signal.SIGTERM)

    def close(self, kill: bool = False) -> None:
        """End the warm process (its jobs go on: they are sessions of their own; one still importing, which forked
        none, is killed rather than waited for); again: nothing."""
        if self.errors.closed:
            return
        ahead.withdraw(self)
        kill = kill or not self.ready.is_set()
        if kill and self.running:  # before its stdin closes: a process killed does not answer that end first
            self.proc.send_signal(signal.SIGKILL)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.tail = self._stderr_tail()
        self.errors.close()


def _shared(env: dict[str, str]) -> dict[str, str]:
    """A job's environment less PER_JOB_ENV, which its warm process gives each forked job on its own."""
    return {k: v for k, v in env.items() if k not in PER_JOB_ENV}


class WarmProcesses:
    """The warm processes of one `warm_starts` block, one per environment but for PER_JOB_ENV, started ahead
    (`prepare`) or at its first job."""

    def __init__(self) -> None:
        self.by_env: dict[tuple[tuple[str, str], ...], WarmProcess] = {}
        self.lock = threading.Lock()
        self.said = False

    def prepare(self, env: dict[str, str]) -> WarmProcess:
        """The warm process of `env` (the job's whole environment; PER_JOB_ENV aside), started now if there
        is none: it imports while the caller goes on."""
        shared = _shared(env)
        key = tuple(sorted(shared.items()))
        with self.lock:
            warm = self.by_env.get(key)
            if warm is None:
                if self.by_env:  # one import of the stack more: say why, so a variable set as tunelab runs is found
                    first = dict(next(iter(self.by_env)))
                    differ = sorted(k for k in first.keys() | shared.keys() if first.get(k) != shared.get(k))
                    say("[yellow]a second warm process for training jobs: their environment differs from the first's "
                        "in {}[/yellow]", ", ".join(differ))
                warm = self.by_env[key] = WarmProcess(shared)
            return warm

    def has(self, env: dict[str, str]) -> bool:
        """Whether a warm process of `env` was started (by `prepare` or an earlier job)."""
        with self.lock:
            return tuple(sorted(_shared(env).items())) in self.by_env

    def start(self, run_yaml: Path, log: Path, env: dict[str, str]) -> WarmJob | None:
        """The job forked by the warm process of `env` (the job's whole environment); None: start it cold."""
        warm = self.prepare(env)
        job = warm.start(run_yaml, log, env)
        if job is None and not self.said:
            self.said = True
            say("[yellow]the warm process for training jobs could not start {} ({}): jobs start as usual[/yellow]",
                run_yaml.parent.name, warm.why_gone())
        return job

    def close(self) -> None:
        with self.lock:
            for warm in self.by_env.values():
                warm.close()
            self.by_env.clear()
