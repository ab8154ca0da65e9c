"""The `tunelab` command's entry point (the console script and `python -m tunelab`): `tunelab train RUN_YAML` is
the training job itself; every other command, and `train` with options, goes to the typer app.

Why: the typer app imports every command group's options and outputs (typer, click, rich, the MCP models: ~0.3 s
of a job's start here), which a training job never uses. The job is one program however it starts: here it runs
in this process as `python -m tunelab.train.job` would (nothing outside the job imports the job), so `tunelab train
run.yaml` by hand, the job scripts' `python -m tunelab.train.job` and torchrun's workers start alike."""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "train" and not args[1].startswith("-"):
        sys.argv = [sys.argv[0], args[1]]  # `python -m tunelab.train.job RUN_YAML`, run in this process
        runpy.run_module("tunelab.train.job", run_name="__main__", alter_sys=True)
        return
    from tunelab.cli.main import app

    app()
