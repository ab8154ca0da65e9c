"""pyproject.toml states ranges, torch from the oldest version tunelab supports: checked here against the
floors tunelab's dependencies declare in their own installed metadata (an independent source)."""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# torchrun passes SIGUSR1 (Slurm's time-limit warning) on to the workers from 2.10 (TORCHELASTIC_SIGNALS_TO_HANDLE)
TUNELAB_TORCH_FLOOR = Version("2.10")


def runtime_requirements() -> list[Requirement]:
    return [Requirement(r) for r in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]


def torch_floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert floors, f"{req}: no >= floor"
    return max(floors)


def test_no_runtime_dependency_is_pinned_exactly():
    """Exact pins live in constraints.txt; an == here would make pip replace a node's own build."""
    assert [str(r) for r in runtime_requirements() if any(s.operator in ("==", "===") for s in r.specifier)] == []


def test_the_torch_floor_is_the_highest_floor_a_dependency_or_tunelab_needs():
    """At least each dependency's floor for torch (transformers' `torch` extra counts: tunelab uses transformers
    with torch), else pip would keep a torch that transformers then disables (it does below 2.6). And no higher
    than tunelab's own need: torchrun's signal forwarding (2.10; tests/unit/test_node_launch.py), which also
    brings torch.nn.attention.varlen; its other torch APIs are older (FSDP2 on CPU 2.7; torch.OutOfMemoryError
    2.5; torch.get_autocast_dtype and fused AdamW on CPU 2.4)."""
    ours = next(r for r in runtime_requirements() if canonicalize_name(r.name) == "torch")
    declared = {}
    for req in runtime_requirements():
        for line in md.requires(req.name) or ():
            dep = Requirement(line)
            if canonicalize_name(dep.name) == "torch" and (dep.marker is None or any(
                    dep.marker.evaluate({"extra": e}) for e in ("", "torch"))):
                declared[req.name] = max((Version(s.version) for s in dep.specifier if s.operator == ">="),
                                         default=Version("0"))
    assert torch_floor(ours) == max(*declared.values(), TUNELAB_TORCH_FLOOR), declared
