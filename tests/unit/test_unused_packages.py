"""The training job marks the packages it never uses absent (train/unused_packages.py): its whole stack then
imports without them, and the libraries' own availability checks answer False. Checked in a fresh interpreter,
as a job starts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from tunelab.host.startup import UNUSED_PACKAGES

CHECK = """
import importlib, importlib.util, json, sys
names = json.loads(sys.argv[1])
before = {n: importlib.util.find_spec(n) is not None for n in names}
from tunelab.host.startup import skip_unused_packages
skip_unused_packages()
from tunelab.train import TRAINING_STACK
for module in TRAINING_STACK:
    importlib.import_module(module)
from transformers.utils import import_utils
from accelerate.utils import imports as accelerate_imports
importable = {}
for n in names:
    try:
        importlib.import_module(n)
        importable[n] = True
    except ImportError:
        importable[n] = False
print(json.dumps({"before": before, "after": {n: importlib.util.find_spec(n) is not None for n in names},
                  "loaded": sorted(n for n in names if sys.modules.get(n) is not None), "importable": importable,
                  "transformers_scipy": import_utils.is_scipy_available(),
                  "accelerate_boto3": accelerate_imports.is_boto3_available()}))
"""


def test_the_training_stack_imports_without_them_and_the_libraries_see_them_absent():
    done = subprocess.run([sys.executable, "-c", CHECK, json.dumps(list(UNUSED_PACKAGES))], capture_output=True,
                          text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    installed = [n for n, found in out["before"].items() if found]
    assert "scipy" in installed  # a dependency of tunelab's statistics: always installed, so the check bites
    assert out["after"] == {n: False for n in UNUSED_PACKAGES}
    assert out["loaded"] == [] and out["importable"] == {n: False for n in UNUSED_PACKAGES}
    assert out["transformers_scipy"] is False and not out["accelerate_boto3"]  # accelerate answers None for absent


def test_the_job_entry_points_skip_them_before_training():
    """Every process that trains (a run's job, the probe's steps, the loop-cost reference run) calls it at the top
    of main, before its stack is imported."""
    import inspect

    from tunelab.train import job, loop_cost, probe_steps, warm

    stack = inspect.getsource(job.import_training_stack)
    assert stack.index("skip_unused_packages()") < stack.index("import_job_stack(")
    for main in (job.main, warm.main):  # a run's job, and the warm process a search's trials are forked from
        assert "import_training_stack()" in inspect.getsource(main), main.__module__
    assert "skip_unused_packages()" in inspect.getsource(probe_steps.main).split("try:")[0]
    assert "skip_unused_packages()" in inspect.getsource(loop_cost)


def test_a_planning_process_keeps_them():
    """Importing tunelab (the planner, the statistics) marks nothing absent: only a job's entry point does."""
    done = subprocess.run([sys.executable, "-c", "import sys, tunelab.cli, tunelab.stats.power; "
                           "print(sys.modules.get('scipy', 0) is None)"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert importlib.util.find_spec("scipy") is not None
