"""The jobs record what importing their stack cost (tunelab/jobimports.py), and the plan prices an evaluation job's
start as the training job's plus the difference (forecast/jobstart.py). The suite turns recording off
(tests/conftest.py); these tests turn it on in a cache of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunelab import jobimports as importcost
from tunelab.catalog import KNOWN_MODELS
from tunelab.forecast.jobstart import JobStart, eval_start, with_evaluation_imports
from tunelab.host.cpuload import LoadWindow
from tunelab.jobimports import Stack, import_job_stack, record_import, recorded_import_s
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.estimate import SourceKind
from tunelab.spec.evaluation import Engine

TRAINING_JOB = """
import json, sys, time
from tunelab.train import job
t0 = time.perf_counter()
code = job.main([sys.argv[1]])  # a run.yaml that is not there: the stack is imported first, then the job refuses
print(json.dumps({"code": code, "wall": time.perf_counter() - t0}))
"""
EVALUATION_IMPORT = """
import json, time
from tunelab.evaluate import EVALUATION_STACK
from tunelab.jobimports import Stack, import_job_stack
t0 = time.perf_counter()
import_job_stack(*EVALUATION_STACK, record_as=Stack.EVALUATION)
print(json.dumps({"wall": time.perf_counter() - t0}))
"""


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TUNELAB_RECORD_IMPORTS", "1")
    return tmp_path


def _window(others_cpu_s: float) -> LoadWindow:
    return LoadWindow(wall_s=1.0, cpu_s=1.0, others_cpu_s=others_cpu_s, cores=2, threads=1)


def _fresh(code: str, *args: str, python: str = sys.executable) -> dict:
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_training_job_and_an_evaluation_record_their_fresh_imports(own_cache):
    assert recorded_import_s(Stack.TRAINING) is None and importcost.evaluation_extra() is None
    job = _fresh(TRAINING_JOB, str(own_cache / "missing" / "run.yaml"))
    assert job["code"] == 1
    training = recorded_import_s(Stack.TRAINING)
    assert training is not None and 0 < training < job["wall"]  # the import, inside the job's own time
    before = importcost.evaluation_extra()  # no evaluation job yet: assumed from the training's
    assert before == importcost.ImportExtra(round(training * (importcost.ASSUMED_EVALUATION_RATIO - 1), 3), True)
    # the same environment named another way (a benchmark runs `../.venv/bin/python`): the same record
    roundabout = os.path.join(os.path.dirname(sys.executable), "..", "bin", os.path.basename(sys.executable))
    evaluation = _fresh(EVALUATION_IMPORT, python=roundabout)
    got = recorded_import_s(Stack.EVALUATION)
    assert got is not None and 0 < got <= evaluation["wall"] + 0.01
    assert importcost.evaluation_extra() == importcost.ImportExtra(max(0.0, got - training), assumed=False)


def test_a_contended_or_repeated_import_is_not_recorded(own_cache):
    record_import(Stack.TRAINING, 3.0, _window(others_cpu_s=1.9))  # others held 1.9 of 2 cores: contended
    assert recorded_import_s(Stack.TRAINING) is None
    record_import(Stack.TRAINING, 3.0, _window(others_cpu_s=0.0))
    assert recorded_import_s(Stack.TRAINING) == 3.0
    import torch  # noqa: F401  (loaded in this process now: the next import is not a fresh one)

    import_job_stack("torch", "json", record_as=Stack.EVALUATION)
    assert recorded_import_s(Stack.EVALUATION) is None


def test_recording_off_records_nothing(own_cache, monkeypatch):
    monkeypatch.setenv("TUNELAB_RECORD_IMPORTS", "0")
    record_import(Stack.TRAINING, 3.0, _window(others_cpu_s=0.0))
    assert recorded_import_s(Stack.TRAINING) is None


def test_an_evaluation_starts_as_a_training_job_plus_the_recorded_difference(own_cache):
    arch = KNOWN_MODELS["qwen2.5-0.5b"]
    history = [HistoryRun(key=r, source="tunelab", origin="measured", run=r, device="cpu", layers=arch.layers,
                          hidden=arch.hidden, parameters=arch.parameters, tokens_per_s=100.0, startup_s=s)
               for r, s in (("a", 11.0), ("b", 12.0), ("c", 14.0))]
    assert eval_start("qwen2.5-0.5b", None, history, Engine.HF).seconds == 12.0  # nothing recorded: the job's
    record_import(Stack.TRAINING, 2.9, _window(others_cpu_s=0.0))
    first = eval_start("qwen2.5-0.5b", None, history, Engine.HF)  # a machine's first plan: no evaluation job yet
    assert first.seconds == pytest.approx(12.0 + 2.9 * 0.7) and "2.0 s: an evaluation job's imports" in first.source
    assert "assumed 1.7× the training job's import" in first.source and first.kind == SourceKind.MEASURED
    record_import(Stack.EVALUATION, 3.8, _window(others_cpu_s=0.0))
    start = eval_start("qwen2.5-0.5b", None, history, Engine.HF)
    assert start.seconds == pytest.approx(12.0 + 0.9) and "0.9 s: an evaluation job's imports" in start.source
    assert start.kind == SourceKind.MEASURED
    shorter = with_evaluation_imports(JobStart(5.0, "x", SourceKind.MEASURED), importcost.ImportExtra(0.0, False))
    assert shorter.seconds == 5.0 and shorter.source == "x"


def test_a_first_plan_prices_the_evaluation_import_from_the_import_it_timed(own_cache):
    """Before any job recorded an import here (a machine's first plan), the evaluation job's extra import is assumed
    from the training stack's import the plan itself timed for a job's start-up (cpuspeed's kept `job-imports`); a
    job's own record, once there, replaces it."""
    from tunelab.diskcache import store_json
    from tunelab.forecast import cpuspeed

    history = [HistoryRun(key="a", source="tunelab", origin="measured", run="a", device="cpu", tokens_per_s=100.0,
                          startup_s=12.0)]
    assert cpuspeed.kept_job_import() is None
    assert eval_start("qwen2.5-0.5b", None, history, Engine.HF).seconds == 12.0  # nothing timed or recorded
    store_json("job-imports", cpuspeed._job_imports_key(), {"seconds": 5.0})  # as timed_startup keeps it
    assert cpuspeed.kept_job_import() == 5.0
    first = eval_start("qwen2.5-0.5b", None, history, Engine.HF)
    assert first.seconds == pytest.approx(12.0 + 5.0 * (importcost.ASSUMED_EVALUATION_RATIO - 1))
    assert "assumed 1.7× the training stack's import a plan timed here: no job's recorded yet" in first.source
    record_import(Stack.TRAINING, 2.9, _window(others_cpu_s=0.0))  # a job's record wins over the plan's timing
    assert eval_start("qwen2.5-0.5b", None, history, Engine.HF).seconds == pytest.approx(12.0 + 2.9 * 0.7)


def test_a_first_search_prices_its_warm_trials_from_the_import_the_plan_timed(own_cache, monkeypatch):
    """Before any job recorded the training stack's import, a local lane's later jobs (a search's trials, a sweep's
    runs) skip the import the plan timed for a job's start-up; a job's record, once there, replaces it; recording
    off (the suite's default) leaves it unpriced."""
    from tunelab.diskcache import store_json
    from tunelab.forecast import cpuspeed, jobstart

    assert jobstart.warm_start_s("local", None) == 0.0  # nothing timed or recorded: every start priced cold
    store_json("job-imports", cpuspeed._job_imports_key(), {"seconds": 5.0})  # as timed_startup keeps it
    assert jobstart.warm_start_s("local", None) == 5.0
    assert jobstart.warm_start_s("slurm", None) == 0.0  # a scheduler's jobs start cold
    monkeypatch.setenv("TUNELAB_RECORD_IMPORTS", "0")
    assert jobstart.warm_start_s("local", None) == 0.0  # recording off: nothing read
    monkeypatch.setenv("TUNELAB_RECORD_IMPORTS", "1")
    record_import(Stack.TRAINING, 2.9, _window(others_cpu_s=0.0))
    assert jobstart.warm_start_s("local", None) == pytest.approx(2.9)  # a job's record wins
