"""The wheelhouse plan, pure (no network, no pip): the node's packages, whether its torch is in range, the pins that
keep them, and pip's resolution sorted into kept, carried (and why) and torch's own. A pre-release the node has counts,
as for pip, so an NGC torch 2.7.0a0+… satisfies `torch>=2.6`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from tunelab.errors import TunelabError

TORCH = "torch"
# What a CUDA PyTorch brings with it (its CUDA libraries, triton, cuda-python): never carried, whatever else
# requires them. NVML's nvidia-ml-py is not among them (tunelab's `gpu` extra).
_TORCH_FAMILY = re.compile(r"^(torch|triton|pytorch-triton(-.+)?|nvidia-(cu|nccl|nvtx|nvjitlink|nvshmem).*|cuda-.+)$")


def is_torch_family(name: str) -> bool:
    return bool(_TORCH_FAMILY.match(canonicalize_name(name)))


@dataclass(frozen=True)
class Installed:
    """One package of the node's environment, as its `pip freeze` line says."""

    name: str
    version: str

    @property
    def parsed(self) -> Version:
        return Version(self.version)


def parse_freeze(text: str, file: str | Path = "--have") -> dict[str, Installed]:
    """Canonical name -> the node's package from `name==version` lines; comments, blanks and editable lines (a project
    in development, not a release) skipped; a line without a version is refused (no range to check)."""
    have: dict[str, Installed] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or line.startswith(("-e ", "--editable")):
            continue
        at = f"line {number}"
        try:
            req = Requirement(line)
        except InvalidRequirement:
            raise TunelabError(f"'{line}' is not a `name==version` line", file=file, field=at) from None
        pins = [s for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
        if req.url or len(pins) != 1 or len(req.specifier) != 1:
            raise TunelabError(f"'{line}' has no exact version: write the list with `pip list --format=freeze`",
                               file=file, field=at)
        try:
            Version(pins[0].version)
        except InvalidVersion:
            raise TunelabError(f"'{pins[0].version}' is not a version pip can compare", file=file, field=at) from None
        name = canonicalize_name(req.name)
        if name in have:
            raise TunelabError(f"{req.name} is listed twice", file=file, field=at)
        have[name] = Installed(req.name, pins[0].version)
    return have


def applicable(requires: Iterable[str], extras: Iterable[str], markers: Mapping[str, str]) -> list[Requirement]:
    """The requirements that hold on the node for the extras asked (a package's Requires-Dist lines)."""
    asked = [""] + sorted(extras)
    out = []
    for text in requires:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**markers, "extra": e}) for e in asked):
            out.append(req)
    return out


def _excludes(req: Requirement, version: str) -> bool:
    return not req.specifier.contains(version, prereleases=True)


def check_torch(have: Mapping[str, Installed], requires: Iterable[Requirement], file: str | Path) -> Installed:
    """The node's torch, which must be in tunelab's range: never carried (the node's build matches its driver)."""
    req = next((r for r in requires if canonicalize_name(r.name) == TORCH), None)
    wanted = f"torch{req.specifier}" if req else "torch"
    got = have.get(TORCH)
    if got is None:
        raise TunelabError(f"the node has no torch: install its own CUDA build of PyTorch first (tunelab needs "
                           f"{wanted}); the wheelhouse never carries torch", file=file)
    if req is not None and _excludes(req, got.version):
        floor = any(s.operator in (">=", ">") and got.parsed < Version(s.version) for s in req.specifier)
        how = "too old" if floor else "outside tunelab's range"
        raise TunelabError(f"the node's torch {got.version} is {how}: tunelab needs {wanted}. Upgrade the node's "
                           f"PyTorch (a build for its CUDA); the wheelhouse never carries torch", file=file)
    return got


def constraints(have: Mapping[str, Installed],
                requires: Iterable[Requirement]) -> tuple[dict[str, str], dict[str, str]]:
    """(pins, out_of_range): `name==version` pins so pip keeps what the node has, except tunelab's requirements it has
    out of range (with why) and torch's family besides torch; torch pinned to its public release."""
    out: dict[str, str] = {}
    for req in requires:
        name: str = canonicalize_name(req.name)
        if name in have and name != TORCH and _excludes(req, have[name].version):
            out[name] = f"the node has {have[name].name} {have[name].version}; tunelab requires {req}"
    pins: dict[str, str] = {}
    for name, got in have.items():
        if name in out or (is_torch_family(name) and name != TORCH):
            continue
        version = got.parsed.base_version if name == TORCH else got.parsed.public
        pins[name] = f"{got.name}=={version}"
    return pins, out


@dataclass(frozen=True)
class Resolved:
    """One package of pip's resolution (an `install` item of its --report)."""

    name: str
    version: str
    requires: tuple[str, ...]
    extras: tuple[str, ...]
    url: str
    sha256: str | None


def parse_report(report: Mapping) -> list[Resolved]:
    """pip's installation report (format version 1) -> its packages."""
    out = []
    for item in report["install"]:
        meta, info = item["metadata"], item["download_info"]
        hashes = info.get("archive_info", {}).get("hashes", {})
        out.append(Resolved(canonicalize_name(meta["name"]), meta["version"], tuple(meta.get("requires_dist", ())),
                            tuple(item.get("requested_extras") or ()), info["url"], hashes.get("sha256")))
    return out


@dataclass(frozen=True)
class Wheel:
    """A wheel the wheelhouse carries, and why: 'tunelab itself', 'missing' or 'out of range'."""

    name: str
    version: str
    why: str
    detail: str


@dataclass
class Plan:
    root: str
    torch: Installed
    wheels: list[Wheel] = field(default_factory=list)
    kept: list[Installed] = field(default_factory=list)
    torch_own: list[Installed] = field(default_factory=list)  # version: the node's, or 'absent'


def classify(resolved: list[Resolved], have: Mapping[str, Installed], torch: Installed, markers: Mapping[str, str],
             root: str = "tunelab", reasons: Mapping[str, str] | None = None) -> Plan:
    """Sort pip's resolution: what is reached from tunelab without entering torch is tunelab's need, the rest and
    torch's family torch's own. A need the node has at the resolved version is kept; any other is carried, with the
    requirement that excludes the node's version, or `reasons`."""
    nodes = {r.name: r for r in resolved}
    root = canonicalize_name(root)
    edges = _parents(resolved, markers)
    plan, needed = Plan(root=root, torch=torch), _needed(root, nodes, edges)
    for name in sorted(needed):
        node, got = nodes[name], have.get(name)
        if name == root:
            plan.wheels.insert(0, Wheel(node.name, node.version, "tunelab itself", "built from this checkout"))
        elif is_torch_family(name):
            plan.torch_own.append(got or Installed(name, "absent"))
        elif got is not None and got.parsed.public == Version(node.version).public:
            plan.kept.append(got)
        elif got is None:
            parents = sorted({p for p, _ in edges.get(name, ())})
            plan.wheels.append(Wheel(name, node.version, "missing", "required by " + ", ".join(parents)))
        else:
            why = _why_replaced(got, nodes, edges.get(name, ()), reasons)
            plan.wheels.append(Wheel(name, node.version, "out of range", why))
    plan.torch_own += [have.get(n) or Installed(n, "absent") for n in sorted(set(nodes) - needed - {TORCH})]
    return plan


def _parents(resolved: list[Resolved], markers: Mapping[str, str]) -> dict[str, list[tuple[str, Requirement]]]:
    """Package -> (parent, requirement) for every requirement that holds on the node; extras asked anywhere are gathered
    until nothing changes (pip's report records them at the top level only)."""
    extras = {r.name: set(r.extras) for r in resolved}
    while True:
        edges: dict[str, list[tuple[str, Requirement]]] = {}
        grown = False
        for r in resolved:
            for req in applicable(r.requires, extras[r.name], markers):
                child = canonicalize_name(req.name)
                if child in extras:
                    edges.setdefault(child, []).append((r.name, req))
                    grown |= not req.extras <= extras[child]
                    extras[child] |= req.extras
        if not grown:
            return edges


def _needed(root: str, nodes: Mapping[str, Resolved], edges: Mapping[str, list[tuple[str, Requirement]]]) -> set[str]:
    """Everything reachable from root through requirements, never passing through torch."""
    children: dict[str, set[str]] = {}
    for child, parents in edges.items():
        for parent, _ in parents:
            children.setdefault(parent, set()).add(child)
    seen, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in seen and child != TORCH:
                seen.add(child)
                todo.append(child)
    return seen & set(nodes)


def _why_replaced(got: Installed, nodes: Mapping[str, Resolved], parents: Iterable[tuple[str, Requirement]],
                  reasons: Mapping[str, str] | None) -> str:
    excluding = [f"{nodes[p].name} {nodes[p].version} requires {req}"
                 for p, req in parents if _excludes(req, got.version)]
    if excluding:
        return f"the node has {got.version}; " + "; ".join(excluding)
    why = (reasons or {}).get(canonicalize_name(got.name))
    return why or f"the node has {got.version}, which pip could not keep beside the other packages"
