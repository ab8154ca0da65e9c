"""The `tunelab` command's entry (tunelab/entry.py): `tunelab train RUN_YAML` is the training job without the typer
app's imports; anything else, `train --help` included, is the app. Run as a user runs them (`python -m tunelab`,
a process of its own); -X importtime lists every module the process imported."""

from __future__ import annotations

import subprocess
import sys


def _tunelab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "tunelab", *args], capture_output=True,
                          text=True, timeout=120)


def _imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_train_is_the_job_without_the_apps_imports(tmp_path):
    missing = tmp_path / "nowhere" / "run.yaml"
    done = _tunelab("train", str(missing))
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing.parent) in errors[0]  # the job's own one-line error
    imported = _imported(done.stderr)
    assert "tunelab.train.launch" in imported  # the job module runs as __main__; its own imports show
    assert not {"tunelab.cli.main", "typer", "click"} & imported


def test_train_with_an_option_and_other_commands_go_to_the_app():
    done = _tunelab("train", "--help")
    assert done.returncode == 0 and "Train one run by hand" in done.stdout
    assert "tunelab.cli.main" in _imported(done.stderr)
    done = _tunelab("train")  # no run.yaml: typer's own usage error
    assert done.returncode == 2 and "Missing argument" in done.stderr
