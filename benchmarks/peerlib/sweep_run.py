"""Each tool's whole pipeline measured from outside, the same way for all (issue 66 item 1): its phases one after the
other, each by peerlib/measure.py (wall, the tree's peak PSS, load), in one cold home per tool per repeat
(peerlib/isolation.py: a user's first sweep with each tool); the wall is the first phase's start to the last
phase's exit, the last score on disk. Repeats interleaved, the tool order rotated each repeat."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from peerlib.isolation import fresh_home
from peerlib.job import Inputs
from peerlib.measure import Measured, own_thread_rule, run_measured, span, thread_env
from peerlib.registry import Found
from peerlib.sweep_peer import PeerPipeline
from peerlib.sweep_spec import Outcome, Phase, SweepResult, SweepSpec
from peerlib.sweep_tunelab import TunelabPipeline


class Pipeline(Protocol):
    @property
    def notes(self) -> str: ...

    def phases(self) -> list[Phase]: ...

    def outcomes(self, measured: dict[str, Measured]) -> list[Outcome]: ...


def pipeline(found: Found, inputs: Inputs, sweep: SweepSpec, out: Path, mean_tokens: float) -> Pipeline:
    if found.name == "tunelab":
        return TunelabPipeline(Path(sys.executable), inputs, sweep, out, mean_tokens)
    return PeerPipeline(found, inputs, sweep, out, mean_tokens)


def environment(found: Found, home: dict[str, str] | None, threads: int) -> tuple[list[str], dict[str, str]]:
    """(command prefix, env): the peers get OMP threads = the cores; tunelab its own thread rule over them (its runs
    side by side each take a share, which an OMP_NUM_THREADS for all would oversubscribe)."""
    env = thread_env(threads, home)
    return own_thread_rule(threads, env) if found.name == "tunelab" else ([], env)


def run_pipeline(found: Found, inputs: Inputs, sweep: SweepSpec, out: Path, repeat: int, version: str,
                 mean_tokens: float, fresh_caches: bool = True) -> SweepResult:
    """One repeat of one tool's pipeline, in a fresh home under out/ (or, not `fresh_caches`, the caller's caches:
    the smoke, which checks the mechanics and must not pay a cold start)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    row = SweepResult(tool=found.name, version=version, repeat=repeat)
    try:
        pipe = pipeline(found, inputs, sweep, out, mean_tokens)
        phases = pipe.phases()
    except Exception as exc:  # noqa: BLE001 - a config that cannot be written is this row's reason
        row.error = f"writing its configs failed: {exc!r}"
        return row
    row.notes = pipe.notes
    prefix, env = environment(found, fresh_home(out / "home") if fresh_caches else None,
                               sweep.threads)
    if isinstance(pipe, TunelabPipeline):
        pipe.env = env
    measured: dict[str, Measured] = {}
    for i, phase in enumerate(phases):
        m = run_measured(prefix + phase.argv(), env, phase.cwd or out, out / f"phase{i}.log")
        measured[phase.name] = m
        row.phases[phase.name] = m.wall_s
        row.load_before = row.load_before or m.load_before
        row.load_after = m.load_after
        if m.returncode:
            row.error = f"{phase.name}: exit {m.returncode}: {m.tail(3)}"
            return row
    runs = list(measured.values())
    row.wall_s = span(runs)
    row.peak_pss_mib = max(m.peak_pss_mib for m in runs)
    try:
        row.outcomes = pipe.outcomes(measured)
    except Exception as exc:  # noqa: BLE001 - the times stand; the scores' reader failing is said
        row.error = f"reading its scores failed: {exc!r}"
    return row


def compare(found: list[Found], inputs: Inputs, sweep: SweepSpec, out: Path, repeats: int, versions: dict[str, str],
            mean_tokens: float, rows_file: Path, after: Callable[[list[SweepResult]], None] | None = None,
            earlier: list[SweepResult] | None = None) -> list[SweepResult]:
    """Every runnable tool × repeats, interleaved (order rotated); each row appended to rows_file as it ends and
    the rows so far handed to `after` (the record rewritten: a run stopped early keeps its summary). `earlier`: rows
    of a run continued (--continue); a (tool, repeat) among them is not run again."""
    rows: list[SweepResult] = list(earlier or [])
    done = {(r.tool, r.repeat) for r in rows}
    for repeat in range(repeats):
        order = found[repeat % len(found):] + found[:repeat % len(found)] if found else []
        for f in (f for f in order if (f.name, repeat) not in done):
            print(f"[sweep] repeat {repeat + 1}/{repeats}: {f.name}", flush=True)
            rows.append(keep(run_pipeline(f, inputs, sweep, out / f.name / str(repeat), repeat,
                                          versions.get(f.name, "?"), mean_tokens), rows_file))
            if after is not None:
                after(rows)
    return rows


def earlier_rows(rows_file: Path) -> list[SweepResult]:
    """The rows a stopped or shorter run appended to rows_file (none when it does not exist)."""
    if not rows_file.is_file():
        return []
    return [result_of(json.loads(line)) for line in rows_file.read_text().splitlines() if line.strip()]


def result_of(record: dict) -> SweepResult:
    """A row of sweep.json or of the rows file as the record it was written from."""
    fields = {**record, "outcomes": [Outcome(**o) for o in record.get("outcomes") or []]}
    return SweepResult(**fields)


def keep(row: SweepResult, rows_file: Path) -> SweepResult:
    """The row appended to rows_file as it ends (nothing lost on a crash) and said."""
    with rows_file.open("a") as sink:
        sink.write(json.dumps(asdict(row)) + "\n")
    print(f"  {describe(row)}", flush=True)
    return row


def describe(row: SweepResult) -> str:
    if row.error and row.wall_s is None:
        return f"{row.tool}: failed: {row.error}"
    shares = ", ".join(f"{name} {s / row.wall_s:.0%}" for name, s in row.phases.items()) if row.wall_s else ""
    scores = ", ".join(f"{o.name} {'–' if o.accuracy is None else f'{o.accuracy:.3f}'}"
                       f"{'' if o.final_loss is None else f' (loss {o.final_loss:.3f})'}" for o in row.outcomes)
    return (f"{row.tool}: wall {row.wall_s:.1f} s ({shares}), peak PSS {row.peak_pss_mib:.0f} MiB, "
            f"exact match: {scores}, load {row.load_before} -> {row.load_after}"
            + (f"; {row.error}" if row.error else ""))
