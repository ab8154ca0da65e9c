"""One wheelhouse, start to end: read the node's freeze, check its torch, let pip resolve tunelab for the node
under the node's versions, sort the result, download what the node must get, and write `requirements.txt` and
`manifest.json` beside the wheels."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tunelab.wheelhouse.plan import (
    Installed,
    Plan,
    Resolved,
    applicable,
    check_torch,
    classify,
    constraints,
    parse_freeze,
)
from tunelab.wheelhouse.resolve import build_wheel, download, resolve, sha256, wheel_metadata
from tunelab.wheelhouse.target import Target, platform_tags

PROJECT = Path(__file__).resolve().parents[3]  # the checkout: src/tunelab/wheelhouse/build.py


@dataclass(frozen=True)
class Carried:
    """A wheel in the folder: what it is, its file and digest, and why the node needs it."""

    name: str
    version: str
    file: str
    sha256: str
    why: str
    detail: str


@dataclass(frozen=True)
class Manifest:
    python: str
    platform: str
    platforms: list[str]  # the tags accepted for that platform
    extras: list[str]
    torch: Installed  # the node's, kept
    wheels: list[Carried]
    kept: list[Installed]  # tunelab's dependencies the node has in range: not carried
    torch_own: list[Installed]  # what comes with torch (version: the node's, or 'absent'): never carried
    install: str
    check: str


CHECK = ("python -m pip check && tunelab --version && "
         "python -c \"import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())\"")


def plan_wheelhouse(have_file: Path, target: Target, extras: tuple[str, ...], project: Path, work: Path,
                    leave_out: tuple[str, ...] = ()) -> tuple[Plan, list[Resolved], Path]:
    """(plan, pip's resolution, tunelab's wheel built in `work`) for the node whose `pip freeze` is have_file;
    leave_out: requirements not followed, so what only they need is not carried."""
    have = parse_freeze(have_file.read_text(), file=have_file)
    wheel = build_wheel(project, work)
    meta = wheel_metadata(wheel)
    requires = applicable(meta.requires, extras, target.markers())
    torch = check_torch(have, requires, have_file)
    pins, out_of_range = constraints(have, requires)
    resolved, conflicts = resolve(wheel, extras, target, pins, work)
    root = canonicalize_name(meta.name)
    graph = [replace(r, requires=tuple(q for q in r.requires if canonicalize_name(Requirement(q).name) not in
                                       leave_out)) if r.name == root and leave_out else r for r in resolved]
    plan = classify(graph, have, torch, target.markers(), root=meta.name, reasons={**out_of_range, **conflicts})
    return plan, resolved, wheel


def build_wheelhouse(have_file: Path, out: Path, target: Target, extras: tuple[str, ...] = (),
                     project: Path = PROJECT) -> Manifest:
    """Write the wheelhouse for the node whose `pip freeze` is have_file into out; returns its manifest."""
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as tmp:
        work = Path(tmp)
        plan, resolved, wheel = plan_wheelhouse(have_file, target, extras, project, work)
        fetched = [r for r in resolved if r.name in {w.name for w in plan.wheels} and r.name != plan.root]
        out.mkdir(parents=True, exist_ok=True)  # only once there is something to put in it
        files = download(fetched, target, out, work)
        files[plan.root] = Path(shutil.copy2(wheel, out / wheel.name))
    return _write(plan, files, out, target, extras)


def _write(plan: Plan, files: dict[str, Path], out: Path, target: Target, extras: tuple[str, ...]) -> Manifest:
    carried = [Carried(w.name, w.version, files[w.name].name, sha256(files[w.name]), w.why, w.detail)
               for w in plan.wheels]
    manifest = Manifest(target.python, target.platform, platform_tags(target.platform), sorted(extras), plan.torch,
                        carried, plan.kept, plan.torch_own,
                        f"python -m pip install --no-index --find-links {out.name} -r {out.name}/requirements.txt",
                        CHECK)
    lines = [f"{c.name}[{','.join(sorted(extras))}]=={c.version}" if c.name == plan.root and extras
             else f"{c.name}=={c.version}" for c in carried]
    (out / "requirements.txt").write_text("\n".join(lines) + "\n")
    (out / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest
