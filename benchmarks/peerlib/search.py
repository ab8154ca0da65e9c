"""The learning-rate search, the same for both tools: LEVELS combinations (LoRA ranks) × TRIALS trials each, rates
log-uniform in [LOW, HIGH], each trial trained at most BUDGET of the one-epoch job's steps, objective the
validation loss. tunelab's side: `tunelab tune` on a spec with that `tune:` block (a seeded TPE study per rank,
successive halving on the validations); the wall time to tune/best.json and the best loss per combination.

tunelab runs its two studies side by side, each on its share of the cores; Oumi's `oumi tune` is one study per
process, so its two run both ways (issue 66): one after the other with every thread each ("oumi", how a user runs
it), and at once with a thread each on the same cores ("oumi at once", tunelab's way). Every side of every repeat
starts with fresh caches and history (peerlib/isolation.py)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from peerlib.isolation import home_env
from peerlib.job import Inputs, Job
from peerlib.measure import Measured, own_thread_rule, run_measured, thread_env
from peerlib.tunelab_side import spec

SEARCH_WORDS = 600  # the capitalization rows of the search (480 to train: 60 steps an epoch, 30 a trial)


@dataclass(frozen=True)
class Search:
    ranks: tuple[int, ...] = (8, 16)  # the LEVELS: one search per rank
    trials: int = 4
    low: float = 1e-4
    high: float = 1e-2
    budget: float = 0.5  # of the one-epoch job's steps
    validation_every: int = 10  # steps between validations (tunelab's halving rungs; Oumi's eval steps)
    seed: int = 0


@dataclass
class SearchResult:
    tool: str
    repeat: int
    wall_s: float | None = None
    best: dict[str, tuple[float, float]] = field(default_factory=dict)  # level -> (rate, val loss)
    trials: int = 0
    load_before: str = ""
    load_after: str = ""
    error: str | None = None
    sampler_cpu_s: float = 0.0  # what the benchmark's memory reads of its processes took (peerlib/measure.py)


def tunelab_spec(inputs: Inputs, job: Job, search: Search) -> dict:
    out = spec(inputs, job)
    out["factors"] = {"lora_rank": list(search.ranks)}
    out["training"].pop("lora_rank")
    out["training"]["validation_every_steps"] = search.validation_every
    out["tune"] = {"learning_rate": {"low": search.low, "high": search.high, "log": True}, "per": ["lora_rank"],
                   "trials": search.trials, "budget": search.budget, "objective": "val_loss", "seed": search.seed,
                   "compare_default": False}
    return out


def run_tunelab(inputs: Inputs, job: Job, search: Search, out: Path, python: Path, repeat: int,
                home: Path | None = None) -> SearchResult:
    """`tunelab tune` on a fresh experiment; `home`: warm caches kept there (None: a fresh home in `out`)."""
    shutil.rmtree(out, ignore_errors=True)
    exp = out / "experiment"
    exp.mkdir(parents=True)
    (exp / "experiment.yaml").write_text(yaml.safe_dump(tunelab_spec(inputs, job, search), sort_keys=False))
    # the same cores, tunelab's rule over them; cold caches and history (or those an untimed run left: --warm-caches)
    prefix, env = own_thread_rule(job.threads, thread_env(job.threads, home_env(home or out / "home",
                                                                                  home is not None)))
    measured: Measured = run_measured([*prefix, str(python), "-m", "tunelab", "tune", str(exp)], env, out,
                                      out / "output.log", memory=False)  # walls compared: no memory read beside
    row = SearchResult("tunelab", repeat, load_before=measured.load_before, load_after=measured.load_after,
                       sampler_cpu_s=measured.sampler_cpu_s)
    if measured.returncode:
        row.error = f"exit {measured.returncode}: {measured.tail(3)}"
        return row
    best = json.loads((exp / "tune" / "best.json").read_text())
    row.wall_s = measured.wall_s
    for name, rate in best.items():
        level = re.sub(r".*lora_rank-", "", name)
        row.best[level] = (rate["learning_rate"], rate["value"])
        row.trials += rate["trials"]
    return row


def describe(row: SearchResult) -> str:
    if row.error:
        return f"{row.tool}: failed: {row.error}"
    best = ", ".join(f"r{lvl}: lr {lr:.3g} val {loss:.4f}" for lvl, (lr, loss) in sorted(row.best.items()))
    return f"{row.tool}: wall {row.wall_s:.1f} s, {row.trials} trials; {best}; load {row.load_before} -> " \
           f"{row.load_after}; memory reads {row.sampler_cpu_s:.1f} CPU s"



def compare(inputs: Inputs, job: Job, search: Search, out: Path, repeats: int, python: Path,
            tools: tuple[str, ...] = ("tunelab", "oumi"), warm: bool = False) -> tuple[list[SearchResult], list[str]]:
    """tunelab tune and Oumi's oumi tune (both ways) on the same search, repeats interleaved (order rotated); `tools`:
    the sides run (--tools: tunelab, oumi). `warm` (--warm-caches): every side first runs once untimed, and its
    timed repeats keep the caches and history that run left (a tool's second search on a machine), for all alike."""
    from peerlib import oumi_tune
    from peerlib.registry import env_python

    oumi_python = env_python("oumi")
    homes = {name: out / "search" / name / "home" for name in ("tunelab", "oumi", "oumi-at-once")} if warm else {}
    sides = {"tunelab": lambda where, r: run_tunelab(inputs, job, search, where, python, r, homes.get("tunelab"))} \
        if "tunelab" in tools else {}
    lines = []
    if "oumi" in tools and (oumi_python.parent.parent / ".tunelab-peer-env").exists():
        sides["oumi"] = lambda where, r: oumi_tune.run_oumi(inputs, job, search, where, oumi_python, r,
                                                            home=homes.get("oumi"))
        sides["oumi at once"] = lambda where, r: oumi_tune.run_oumi(inputs, job, search, where, oumi_python, r,
                                                                    at_once=True, home=homes.get("oumi-at-once"))
    elif "oumi" in tools:
        lines.append("search: oumi could not run: no environment: run scripts/peer-env oumi")
    rows: list[SearchResult] = []
    if not sides:
        return rows, [*lines, f"search: nothing to run: --tools {','.join(tools)} names neither tunelab nor oumi"]
    for name in sides if warm else ():
        print(f"[peers] search warm-up (not timed): {name}", flush=True)
        print(f"  {describe(sides[name](out / 'search' / name.replace(' ', '-') / 'warm-up', -1))}", flush=True)
    for repeat in range(repeats):
        names = list(sides)[repeat % len(sides):] + list(sides)[:repeat % len(sides)]
        for name in names:
            print(f"[peers] search repeat {repeat + 1}/{repeats}: {name}", flush=True)
            row = sides[name](out / "search" / name.replace(" ", "-") / str(repeat), repeat)
            rows.append(row)
            print(f"  {describe(row)}", flush=True)
    return rows, lines
