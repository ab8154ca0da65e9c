"""The job and the coordinator meet only in the run directory: nothing outside tunelab.train imports it
(function-level imports included), and the job's entry point is a program of its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tunelab

SRC = Path(tunelab.__file__).parent


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_nothing_outside_train_imports_train():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if SRC / "train" in path.parents:
            continue
        hits = [n for n in _imported(ast.parse(path.read_text())) if n == "tunelab.train" or
                n.startswith("tunelab.train.")]
        offenders += [f"{path.relative_to(SRC)}: {n}" for n in hits]
    assert offenders == []


def test_the_job_entry_point_refuses_a_control_in_one_line(write_spec):
    from tunelab.scaffold.write import scaffold

    control = next(c for c in scaffold(write_spec()).runs if c.kind == "control")
    proc = subprocess.run([sys.executable, "-m", "tunelab.train.job", str(control.run_dir / "run.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: ") and "nothing to train" in proc.stderr
    usage = subprocess.run([sys.executable, "-m", "tunelab.train.job"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
