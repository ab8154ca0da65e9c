"""The tools by name, each found lazily: a module that fails to import, or an environment not made, is a row that
says why, never a crash of the whole benchmark."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

from peerlib.result import Peer

ROOT = Path(__file__).resolve().parents[2]
TRAINERS = ("tunelab", "torchtune", "llamafactory", "axolotl", "oumi")
MODULES = {"tunelab": "peerlib.tunelab_side", "torchtune": "peerlib.torchtune",
           "llamafactory": "peerlib.llamafactory", "axolotl": "peerlib.axolotl", "oumi": "peerlib.oumi"}


@dataclass(frozen=True)
class Found:
    name: str
    peer: Peer | None
    python: Path | None
    why: str = ""  # set when peer or python is None


def env_python(env: str) -> Path:
    """A peer's interpreter as scripts/peer-env makes it (.venv-peer-NAME in the checkout)."""
    return ROOT / f".venv-peer-{env}" / "bin" / "python"


def peer_pythons(items: list[str]) -> dict[str, Path]:
    """`--peer-python NAME=PYTHON` options as {name: interpreter}; ValueError on an item without `=`."""
    pairs = [item.split("=", 1) for item in items]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError("--peer-python takes NAME=PYTHON")
    return {name: Path(python) for name, python in pairs}


def find(name: str, python: Path | None = None) -> Found:
    """The tool `name` and its interpreter: `python` when given (an environment made another way, e.g. from carried
    wheels on an offline GPU machine: benchmarks/gpu_truth.py --peers), else scripts/peer-env's."""
    try:
        peer: Peer = importlib.import_module(MODULES[name]).PEER
    except Exception as exc:  # a peer module that cannot load is one row's reason
        return Found(name, None, None, f"its benchmark module failed to import: {exc!r}")
    if not peer.env:
        return Found(name, peer, Path(sys.executable))
    if python is not None:
        return Found(name, peer, python) if python.exists() else Found(name, peer, None, f"no interpreter at {python}")
    python = env_python(peer.env)
    stamp = python.parent.parent / ".tunelab-peer-env"
    if not python.exists() or not stamp.exists():
        return Found(name, peer, None, f"no environment: run scripts/peer-env {peer.env}")
    return Found(name, peer, python)
