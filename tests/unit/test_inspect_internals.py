"""Every private inspect-ai name tunelab uses (evaluate/inspect_internals.py, the one module that imports them) is
still where it was, with the shape tunelab relies on. Each test checks one name — its place, its signature, what it
does — and a failure names it and the installed inspect-ai version, so an upgrade that moved one is caught here,
not by a wrong .eval log or a crash in a user's evaluation. pyproject.toml allows only the versions these tests
have passed on.
"""

from __future__ import annotations

import ast
import inspect as pyinspect
import io
import re
import tomllib
import zipfile
from importlib import import_module
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tunelab.evaluate import inspect_internals as door

INSTALLED = version("inspect_ai")
ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "tunelab"


def private(dotted: str) -> Any:
    """The object at a dotted name of inspect-ai, or a failure naming it and the installed version."""
    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"inspect-ai {INSTALLED}: {dotted} is gone ({type(exc).__name__}: {exc}); "
                    f"tunelab's evaluate/inspect_internals.py uses it", pytrace=False)


def shape(dotted: str, ok: bool, what: str) -> None:
    """A failure naming the name, the installed version and what about it changed, unless ok."""
    if not ok:
        pytest.fail(f"inspect-ai {INSTALLED}: {dotted} changed: {what} "
                    f"(tunelab's evaluate/inspect_internals.py relies on it)", pytrace=False)


def params(fn: Any) -> list[str]:
    return list(pyinspect.signature(fn).parameters)


def test_eval_results():
    from inspect_ai.scorer import SampleScore, Score, match

    name = "inspect_ai._eval.task.results.eval_results"
    fn = private(name)
    shape(name, params(fn)[:5] == ["samples", "scores", "reducers", "scorers", "metrics"]
          and "completed_samples" in params(fn), f"signature is now {pyinspect.signature(fn)}")
    scores = [{"match": SampleScore(score=Score(value=v), sample_id=i, scorer="match")} for i, v in ((1, "C"), (2, "I"))]
    results, reductions = door.eval_results(2, scores, None, [match()], None, completed_samples=2)
    metrics = {k: m.value for k, m in results.scores[0].metrics.items()}
    shape(name, results.scores[0].name == "match" and metrics == {"accuracy": 0.5, "stderr": 0.5},
          f"one right and one wrong match() score give {results.scores[0].name}: {metrics}")
    shape(name, [(r.scorer, [s.value for s in r.samples]) for r in reductions] == [("match", [1.0, 0.0])],
          f"the reductions are {reductions}")


def test_unique_scorer_name():
    from inspect_ai.scorer import includes, match

    name = "inspect_ai.scorer._scorer.unique_scorer_name"
    fn = private(name)
    shape(name, params(fn) == ["scorer", "already_used_names"], f"signature is now {pyinspect.signature(fn)}")
    names: list[str] = []
    for scorer in (match(), match(), includes()):
        names.append(door.unique_scorer_name(scorer, names))
    shape(name, names == ["match", "match1", "includes"], f"match, match, includes are named {names}")


def test_registry_unqualified_name():
    from inspect_ai.scorer import match

    name = "inspect_ai._util.registry.registry_unqualified_name"
    fn = private(name)
    shape(name, params(fn) == ["o"], f"signature is now {pyinspect.signature(fn)}")
    got = door.registry_unqualified_name(match())
    shape(name, got == "match", f"match() is named {got!r}")


def test_zstd_threads(monkeypatch):
    import zstandard

    name = "inspect_ai._util.zipfile._ZSTD_THREADS"
    before = private(name)
    shape(name, isinstance(before, int), f"it is now {before!r}, not a thread count")
    seen: list[Any] = []

    real = zstandard.ZstdCompressor

    def Seen(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 — the real compressor, its thread count noted
        # (a Python subclass of the C type corrupted the heap: a segfault at a later garbage collection)
        seen.append(kwargs.get("threads"))
        return real(*args, **kwargs)

    from inspect_ai._util.zipfile import zipfile_compress_kwargs

    monkeypatch.setattr(zstandard, "ZstdCompressor", Seen)
    monkeypatch.setattr(import_module("inspect_ai._util.zipfile"), "_ZSTD_THREADS", before)  # put back after
    door.set_zstd_threads(0)
    with zipfile.ZipFile(io.BytesIO(), "w", **zipfile_compress_kwargs) as zf:
        zf.writestr("samples/1_epoch_1.json", "{}" * 100)
    shape(name, door.zstd_threads() == 0 and seen == [0],
          f"a member written after setting it to 0 was compressed with threads {seen}")


def test_vllm_api():
    name = "inspect_ai.model._providers.vllm.VLLMAPI"
    cls = private(name)
    shape(name, door.VLLMAPI is cls, "the door hands out another class")
    shape(name, {"model_name", "base_url", "config"} <= set(params(cls.__init__)),
          f"its constructor is now {pyinspect.signature(cls.__init__)}")
    shape(name, params(cls._resolve_server) == ["self"] and params(cls.on_response) == ["self", "response"],
          f"_resolve_server{pyinspect.signature(cls._resolve_server)}, "
          f"on_response{pyinspect.signature(cls.on_response)}")
    base = "tunelab-inspect-internals-test"
    api = cls(base, base_url="http://127.0.0.1:9/v1")  # a server named by URL: nothing started, nothing contacted
    try:
        api.model_name = f"{base}:adapter"
        api._resolve_server()
        # why vllm_provider.TunelabVLLMAPI overrides it: inspect renames the API to its base
        shape(name, api.model_name == base and api.base_url == "http://127.0.0.1:9/v1",
              f"_resolve_server left model_name {api.model_name!r}, base_url {api.base_url!r}")
    finally:
        door.forget_vllm_server(base)


def test_vllm_servers():
    name = "inspect_ai.model._providers._vllm_lora._vllm_servers"
    servers = private(name)
    shape(name, isinstance(servers, dict), f"it is now a {type(servers).__name__}")
    base = "tunelab-inspect-internals-test"
    door.VLLMAPI(base, base_url="http://127.0.0.1:9/v1")
    shape(name, base in servers, f"a VLLMAPI made for base {base!r} left keys {list(servers)}")
    door.forget_vllm_server(base)
    shape(name, base not in servers, "forget_vllm_server left the base's server record")


@pytest.mark.slow
def test_sample_state(tmp_path):
    """Read from a solver of a real inspect eval (mockllm: no model), as the tunelab provider reads it."""
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.solver import Generate, TaskState, solver

    name = "inspect_ai.solver._task_state.sample_state"
    fn = private(name)
    shape(name, params(fn) == [], f"signature is now {pyinspect.signature(fn)}")
    shape(name, door.sample_state() is None, "it is not None outside a sample")
    seen = []

    @solver
    def note_state():
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            now = door.sample_state()
            seen.append(None if now is None else (now.sample_id, now.epoch))
            return state
        return solve

    task = Task(dataset=[Sample(input="hi", target="x", id="s1")], solver=note_state(), epochs=2)
    eval(task, model="mockllm/model", log_dir=str(tmp_path), display="none")
    shape(name, sorted(seen) == [("s1", 1), ("s1", 2)], f"a solver of sample s1, epochs 1 and 2, read {seen}")


def test_eval_call_imports(tmp_path):
    """inspect's eval() imports its ACP server module at its first call, and with it the `acp` package's pydantic
    schema (~0.4 s): imported with the evaluation stack first (EVAL_CALL_IMPORTS), a first eval() imports none of
    that package (in a fresh process, as a job runs)."""
    import json
    import subprocess
    import sys

    name = "inspect_ai.agent._acp.server.acp_server"
    shape(name, callable(private(name)), "it is no longer a callable")
    code = f"""
import json, sys
from tunelab.evaluate import EVALUATION_STACK
from tunelab.host.startup import import_stack
import_stack(*EVALUATION_STACK)
before = set(sys.modules)
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
eval(Task(dataset=[Sample(input="hi", target="x")]), model="mockllm/model", log_dir={str(tmp_path)!r}, display="none")
print(json.dumps(sorted(m for m in set(sys.modules) - before if m.split(".")[0] == "acp")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    late = json.loads(done.stdout.strip().splitlines()[-1])
    shape(name, late == [], f"a first eval() after the stack still imported {late[:5]}")


def test_every_private_name_has_its_test_here():
    tests = {"inspect_ai._eval.task.results.eval_results": test_eval_results,
             "inspect_ai.scorer._scorer.unique_scorer_name": test_unique_scorer_name,
             "inspect_ai._util.registry.registry_unqualified_name": test_registry_unqualified_name,
             "inspect_ai._util.zipfile._ZSTD_THREADS": test_zstd_threads,
             "inspect_ai.model._providers.vllm.VLLMAPI": test_vllm_api,
             "inspect_ai.model._providers._vllm_lora._vllm_servers": test_vllm_servers,
             "inspect_ai.solver._task_state.sample_state": test_sample_state,
             "inspect_ai.agent._acp.server.acp_server": test_eval_call_imports}
    assert set(door.PRIVATE_NAMES) == set(tests)


def _private_imports(path: Path) -> list[str]:
    """The private inspect-ai names a source file imports (a module or name starting with `_`)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "inspect_ai":
            out += [f"{node.module}.{a.name}" for a in node.names
                    if any(p.startswith("_") for p in [*node.module.split("."), a.name])]  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "inspect_ai"
                    and any(p.startswith("_") for p in a.name.split("."))]
    return out


def test_no_other_module_of_tunelab_imports_a_private_name():
    door_file = SRC / "evaluate" / "inspect_internals.py"
    for name in _private_imports(door_file):  # the door names every private name it imports (or its module)
        assert name in door.PRIVATE_NAMES or any(d.startswith(name + ".") for d in door.PRIVATE_NAMES), name
    others = {str(p.relative_to(SRC)): _private_imports(p) for p in SRC.rglob("*.py") if p != door_file}
    assert {p: names for p, names in others.items() if names} == {}


def test_pyproject_allows_only_the_versions_tested():
    [req] = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
             if re.match(r"inspect-ai\b", r)]
    assert INSTALLED in door.INSPECT_AI_TESTED, (
        f"inspect-ai {INSTALLED} is installed, but these tests have passed only on {door.INSPECT_AI_TESTED}: "
        "run them, then add it to INSPECT_AI_TESTED and pyproject.toml's range")
    assert all(req.specifier.contains(v) for v in door.INSPECT_AI_TESTED), req
    tested = sorted(Version(v) for v in door.INSPECT_AI_TESTED)
    below = f"{tested[0].major}.{tested[0].minor}.{tested[0].micro - 1}"  # the releases just outside them
    above = f"{tested[-1].major}.{tested[-1].minor}.{tested[-1].micro + 1}"
    assert not req.specifier.contains(below) and not req.specifier.contains(above), (
        f"pyproject.toml's {req} allows inspect-ai versions beyond those tested ({door.INSPECT_AI_TESTED})")
