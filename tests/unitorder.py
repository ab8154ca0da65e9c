"""The order in which pytest-xdist hands out the suite's units (a test file, or the files sharing a slow session
fixture), so that the run ends when its work does.

Why: `--dist loadfile` gives each idle worker the next unit in collection order. In alphabetical order the longest
units could start last and leave one worker running alone at the end; the longest go first here (LPT), by the
seconds each took in a recorded run (tests/unit_seconds.json: `--durations` summed per file; a file not listed
counts as a fast one). One constraint: a Slurm module marked `slurm_alone` holds the cluster alone, and a module
that shares it waits for it (tests/slurmcluster.py). The alone one goes first, and the sharing ones only after
enough other work to keep the other workers busy until it ends, so that none of them waits idle on its lock."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

SECONDS_FILE = Path(__file__).with_name("unit_seconds.json")
UNLISTED_S = 1.0

Item = TypeVar("Item")


def recorded_seconds(path: Path = SECONDS_FILE) -> dict[str, float]:
    """{test file relative to the checkout: seconds}; empty when the file is missing or unreadable."""
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def order_units(units: dict[str, list[Item]], files: Callable[[Item], str], alone: Callable[[Item], bool],
                shares_cluster: Callable[[Item], bool], seconds: dict[str, float], workers: int) -> list[str]:
    """The units' order: the alone ones, then every other unit longest first, the cluster-sharing units placed
    once the units before them cost the alone ones' seconds times the other workers."""

    def cost(unit: str) -> float:
        return sum(seconds.get(f, UNLISTED_S) for f in {files(i) for i in units[unit]})

    first = [u for u in units if any(alone(i) for i in units[u])]
    waiting = sorted((u for u in units if u not in first and any(shares_cluster(i) for i in units[u])),
                     key=cost, reverse=True)
    rest = sorted((u for u in units if u not in first and u not in waiting), key=cost, reverse=True)
    if not first:
        return sorted([*waiting, *rest], key=cost, reverse=True)
    busy_until = sum(cost(u) for u in first) * max(1, workers - 1)
    queue, spent = list(first), 0.0
    for unit in rest:
        if waiting and spent >= busy_until:
            queue += waiting
            waiting = []
        queue.append(unit)
        spent += cost(unit)
    return queue + waiting


def reorder(items: Sequence[Item], unit: Callable[[Item], str], **how) -> list[Item]:
    """items regrouped by unit in order_units' order (within a unit, as collected)."""
    units: dict[str, list[Item]] = {}
    for item in items:
        units.setdefault(unit(item), []).append(item)
    return [item for name in order_units(units, **how) for item in units[name]]


def seconds_from_junit(xml: Path, root: Path) -> dict[str, float]:
    """{test file: seconds} summed from a pytest --junitxml report (each case's setup, call and teardown)."""
    import xml.etree.ElementTree as ET

    out: dict[str, float] = {}
    for case in ET.parse(xml).iter("testcase"):
        parts = [p for p in (case.get("classname") or "").split(".") if p and not p[0].isupper()]
        path = "/".join(parts) + ".py"
        if (root / path).is_file():
            out[path] = out.get(path, 0.0) + float(case.get("time") or 0.0)
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= UNLISTED_S}


if __name__ == "__main__":  # python tests/unitorder.py REPORT.xml: rewrite unit_seconds.json from a recorded run
    import sys

    table = seconds_from_junit(Path(sys.argv[1]), SECONDS_FILE.parents[1])
    SECONDS_FILE.write_text(json.dumps(table, indent=0) + "\n")
    print(f"{SECONDS_FILE}: {len(table)} files, {sum(table.values()):.0f} s")
