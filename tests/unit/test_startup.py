"""A heavy process imports its stack with the garbage collector paused, then freezes it (tunelab/host/startup.py).
Each check runs in a fresh interpreter: a test session has imported everything already."""

from __future__ import annotations

import json
import os
import subprocess
import sys

COUNT_COLLECTIONS = """
import gc, json, sys
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and info["generation"] == 2 else None)
"""


def _fresh(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", COUNT_COLLECTIONS + code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_stack_imports_without_a_full_collection_and_stays_frozen():
    got = _fresh("""
from tunelab.host.startup import import_stack
before = len(full)
import_stack("torch", "transformers")
during, frozen = len(full) - before, gc.get_freeze_count()
import_stack("torch")  # imported already: nothing to do, nothing frozen again
print(json.dumps({"during": during, "frozen": frozen, "again": gc.get_freeze_count(), "enabled": gc.isenabled(),
                  "imported": "transformers" in sys.modules}))
""")
    assert got["imported"] and got["enabled"] and got["during"] == 0
    assert got["frozen"] > 100_000 and got["again"] == got["frozen"]


def test_the_same_imports_with_the_collector_on_collect_fully():
    """The control: what import_stack avoids happens without it."""
    got = _fresh("""
before = len(full)
import torch, transformers
print(json.dumps({"during": len(full) - before}))
""")
    assert got["during"] >= 2


def test_a_failed_import_leaves_the_collector_on():
    got = _fresh("""
from tunelab.host.startup import import_stack
try:
    import_stack("json", "tunelab_no_such_module")
    raised = False
except ModuleNotFoundError:
    raised = True
print(json.dumps({"raised": raised, "enabled": gc.isenabled()}))
""")
    assert got == {"raised": True, "enabled": True}


def test_the_training_job_imports_its_stack_paused_before_it_reads_run_yaml(tmp_path):
    got = _fresh(f"""
from tunelab.train import TRAINING_STACK, job
assert not [m for m in TRAINING_STACK if m in sys.modules], "job.py imported the stack itself"
before = len(full)
code = job.main([{str(tmp_path / "missing" / "run.yaml")!r}])
print(json.dumps({{"code": code, "during": len(full) - before, "frozen": gc.get_freeze_count(),
                  "stack": all(m in sys.modules for m in TRAINING_STACK)}}))
""")
    assert got["code"] == 1 and got["stack"] and got["frozen"] > 100_000 and got["during"] == 0


COUNT_SCANS = """
import importlib.metadata, json, sys
scans = []
scan = importlib.metadata.packages_distributions
def counted():
    scans.append(1)
    return scan()
importlib.metadata.packages_distributions = counted
from tunelab.jobimports import Stack, import_job_stack
import_job_stack(sys.argv[1], record_as=Stack.TRAINING)  # TRL maps the installed packages as it imports
from trl import import_utils
print(json.dumps({"scans": len(scans), "same": dict(import_utils.PACKAGE_DISTRIBUTION_MAPPING) == scan(),
                  "restored": importlib.metadata.packages_distributions is counted}))
"""


def test_the_installed_packages_are_mapped_once_until_one_is_installed(tmp_path):
    """The first job process scans the installed packages' metadata and the next reads its answer; installing a
    package (a new *.dist-info in a directory on the path) makes the next scan again. Each process fresh. The map
    is made by the module of TRL that makes it (trl.import_utils, without torch), and read by the training stack
    whole (trl.trainer.sft_trainer), which then scans nothing."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "placeholder-0.1.dist-info").mkdir()
    env = {**os.environ, "TUNELAB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(site)}

    def job(stack: str) -> dict:
        out = subprocess.run([sys.executable, "-c", COUNT_SCANS, stack], capture_output=True, text=True,
                             timeout=300, env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert job("trl.import_utils") == {"scans": 1, "same": True, "restored": True}
    assert job("trl.trainer.sft_trainer") == {"scans": 0, "same": True, "restored": True}
    (site / "another-1.0.dist-info").mkdir()  # installed: the directory's mtime moves
    assert job("trl.import_utils") == {"scans": 1, "same": True, "restored": True}
