"""Processes of their own without paying the imports again: a child forked from a benchmark that has imported
torch, transformers and PEFT once (a fresh Python process spends ~10 s CPU importing them, most of what a
smoke's tiny job costs). The child's RSS and ru_maxrss are its own, and so is whatever it does lazily the first
time (a first step's imports), so variants measured in forked children start alike.

Smoke modes run their scaffolded training jobs this way (`run_job`): what job.sh runs (`python -m
tunelab.train.job run.yaml` from the run's directory, HF_HUB_OFFLINE=1, output in train.log), in a fork; the
full benchmarks run job.sh itself, interpreter start and imports included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a forked child, its JSON-able result sent back through a pipe; SystemExit with the exit
    status when the child fails (its traceback on its stderr)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # what tokenizers falls back to in a fork anyway
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, send, leave without the parent's exit handlers
        os.close(read)
        code = 0
        try:
            with os.fdopen(write, "w") as pipe:
                pipe.write(json.dumps(fn(*args)))
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        sent = pipe.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not sent:
        raise SystemExit(f"{fn.__name__} failed in its process (exit {code})")
    return json.loads(sent)


def preload_training() -> None:
    """What a training job imports, imported here once (before forking its jobs)."""
    import peft  # noqa: F401
    import trl  # noqa: F401
    from transformers import Trainer, TrainerCallback  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    import tunelab.train.job  # noqa: F401


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
