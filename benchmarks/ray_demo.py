"""The demo sweep on a two-node Ray cluster beside the same sweep here (issue 67's goals): accuracies equal, the
makespan the plan predicted against the one measured, and tunelab's overhead per run on Ray beyond the same run local.

The cluster is the suite's (tests/raycluster.py SUITE: a head and a second node, one CPU each, in network namespaces;
root needed). In turn: the demo sweep (`tunelab demo`'s spec: 2 tiny models x 2 ranks + 2 controls) run here with
`tunelab run` then `tunelab eval`, which fills the history the Ray plan then reads (a history of its own); the same spec for Ray planned
(`plan --json`: its forecast's makespan, P10-P90), scaffolded and run with `tunelab run --wait`, timed from the
command to its end. A run's overhead is its training's time from its job's submission (the ledger's jobs rows:
submitted_at) to the training's own end (status.json's finished_at) on Ray less the same on the local run; both executors run two at once
(local: two CPU shares; Ray: two one-CPU nodes), so a job's queueing is in it. tunelab's overhead per run is timed
apart: one run alone, trained and evaluated as a user would, on each executor in fresh experiments (`--repeats`). Every job runs at one thread (OMP_NUM_THREADS=1 here as on a
one-CPU Ray node). Prints one table and the three goal lines; exit 1 when accuracies differ.

    python benchmarks/ray_demo.py [--out DIR] [--repeats 3] [--smoke] [--overhead-only]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console

from tunelab.demo import prepare_inputs
from tunelab.ledger import store as ledger
from tunelab.spec.resources import ExecutorKind

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import raycluster  # noqa: E402  (the tests' cluster, in network namespaces)

ONE = "tiny-2x128_r4"  # the run timed alone for the overhead
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # TUNELAB_HISTORY: main() gives it one


def tunelab(*args: str, log: Path) -> float:
    """`tunelab ARGS` as a user types it; its wall seconds (its output appended to `log`)."""
    t0 = time.monotonic()
    with open(log, "a") as out:
        code = subprocess.run([sys.executable, "-m", "tunelab", *args], env=ENV, stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode
    if code != 0:
        raise SystemExit(f"tunelab {' '.join(args)} exited {code}: see {log}")
    return time.monotonic() - t0


def job_seconds(exp: Path) -> dict[str, float]:
    """Each run's training: its job's submission (the ledger) to the training's own end (status.json's finished_at,
    written by the training process), s — not the job's end, which on Ray holds the run's evaluation too."""
    rows = ledger.query(exp, "SELECT run, submitted_at FROM jobs WHERE kind = 'train' AND failure = 'completed'")
    ended = {r["run"]: json.loads((exp / "runs" / r["run"] / "status.json").read_text())["finished_at"] for r in rows}
    return {r["run"]: (dt.datetime.fromisoformat(ended[r["run"]]) - dt.datetime.fromisoformat(r["submitted_at"]))
            .total_seconds() for r in rows}


def scores(exp: Path) -> dict[str, float | None]:
    out = subprocess.run([sys.executable, "-m", "tunelab", "results", str(exp), "--json"], env=ENV,
                         capture_output=True, text=True, check=True).stdout
    return {r["name"]: r["score"] for r in json.loads(out)["runs"]}


SMOKE: dict = {}  # --smoke: one model, one rank, no controls, one epoch, 40 test words (main() fills it)


def spec_for(out: Path, executor: ExecutorKind, address: str | None) -> Path:
    spec_path = prepare_inputs(out, Console(quiet=True), executor)
    spec = yaml.safe_load(spec_path.read_text())
    if address:
        spec["resources"]["address"] = address
    if SMOKE:
        spec["models"], spec["factors"] = spec["models"][:1], {"lora_rank": [4]}
        spec["controls"], spec["training"]["epochs"], spec["eval"]["limit"] = False, 1, 40
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def phases(exp: Path, began: dt.datetime, ended: dt.datetime) -> dict[str, float]:
    """Where one run's wall went, s: from the first command to its training job's submission (the ledger), the
    dispatch (to the training process's creation, summary.json), the training (to status.json's finished_at), and
    from the training's end to the last command's end (the evaluation, the look that sees the job end, the ingest)."""
    (row,) = ledger.query(exp, "SELECT run, submitted_at FROM jobs WHERE kind = 'train' AND failure = 'completed'")
    run_dir = exp / "runs" / row["run"]
    created = json.loads((run_dir / "summary.json").read_text())["process_started_at"]
    finished = json.loads((run_dir / "status.json").read_text())["finished_at"]
    marks = [began, *(dt.datetime.fromisoformat(t) for t in (row["submitted_at"], created, finished)), ended]
    names = ("to submission", "dispatch", "training", "after training")
    return {n: (b - a).total_seconds() for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}


def one_run(out: Path, address: str, log: Path) -> tuple[float, dict[str, float]]:
    """One run alone, trained and evaluated as a user would: `run` + `eval --run` here against `run --wait` on Ray
    (trained, then evaluated, by one Ray job); fresh experiments. Ray's wall less the local one, s, and the same
    difference phase by phase (phases())."""
    local, ray = spec_for(out / "local", ExecutorKind.LOCAL, None), spec_for(out / "ray", ExecutorKind.RAY, address)
    for spec in (local, ray):
        tunelab("scaffold", str(spec), log=log)
    began = _utc()
    here = (tunelab("run", str(local.parent), "--run", ONE, log=log)
            + tunelab("eval", str(local.parent), "--run", ONE, log=log))
    local_phases = phases(local.parent, began, _utc())
    began = _utc()
    there = tunelab("run", str(ray.parent), "--run", ONE, "--wait", log=log)
    ray_phases = phases(ray.parent, began, _utc())
    here, there = round(here, 1), round(there, 1)  # the overhead is the difference of the figures printed
    diff = {k: ray_phases[k] - local_phases[k] for k in ray_phases}
    print(f"one run alone: local {here:.1f} s, Ray {there:.1f} s; Ray - local by phase: "
          + ", ".join(f"{k} {v:+.1f}" for k, v in diff.items()), flush=True)
    return there - here, diff


def sweep(out: Path, address: str, log: Path) -> bool:
    """The demo sweep here, then on Ray: the status of the Ray sweep, each run's training job, the makespan against
    the plan's, and whether the accuracies are the same (returned)."""
    local = spec_for(out / "local", ExecutorKind.LOCAL, None)
    tunelab("scaffold", str(local), log=log)
    local_wall = tunelab("run", str(local.parent), log=log) + tunelab("eval", str(local.parent), log=log)
    ray = spec_for(out / "ray", ExecutorKind.RAY, address)
    plan = json.loads(subprocess.run([sys.executable, "-m", "tunelab", "plan", str(ray), "--json"], env=ENV,
                                     capture_output=True, text=True, check=True).stdout)
    fc = plan["forecast"]
    tunelab("scaffold", str(ray), log=log)
    ray_wall = tunelab("run", str(ray.parent), "--wait", log=log)
    wide = {**ENV, "COLUMNS": "200"}  # no terminal: rich would cut the table to 80 columns
    print(subprocess.run([sys.executable, "-m", "tunelab", "status", str(ray.parent)], env=wide,
                         capture_output=True, text=True, check=False).stdout, flush=True)
    here, there = job_seconds(local.parent), job_seconds(ray.parent)
    print("\nin the sweeps, each run's training from its job's submission to the training's end (queueing included):")
    print(f"{'run':<22}{'local job s':>12}{'Ray job s':>11}{'Ray - local':>13}")
    for run in sorted(here):
        print(f"{run:<22}{here[run]:>12.1f}{there.get(run, float('nan')):>11.1f}"
              f"{there.get(run, float('nan')) - here[run]:>+13.1f}")
    s_here, s_there = scores(local.parent), scores(ray.parent)
    error = (fc["makespan_s"] - ray_wall) / ray_wall * 100
    print(f"\nlocal sweep (run + eval): {local_wall:.1f} s; Ray sweep (`run --wait`, evaluation included): "
          f"{ray_wall:.1f} s")
    print(f"makespan: predicted {fc['makespan_s']:.1f} s (P10-P90 {fc['makespan_p10_s']:.1f}-"
          f"{fc['makespan_p90_s']:.1f}), measured {ray_wall:.1f} s: {error:+.1f} % (goal within 15 %)")
    same = s_here == s_there
    print(f"accuracies: {'the same' if same else 'DIFFERENT'} ({s_there} on Ray, {s_here} here)")
    return same


def overhead(out: Path, address: str, log: Path, repeats: int) -> None:
    """The one run alone on each executor, `repeats` times in turn: the wall difference and its phases'."""
    timed = [one_run(out / f"one-{i}", address, log) for i in range(repeats)]
    over = [o for o, _ in timed]
    print(f"one run alone ({ONE}: train + evaluate), Ray - local, s: {', '.join(f'{o:+.1f}' for o in over)}")
    print(f"overhead per run on Ray beyond local: median {statistics.median(over):+.1f} s over {len(over)} "
          f"(goal <= 3 s)")
    for phase in timed[0][1]:
        each = [d[phase] for _, d in timed]
        print(f"  {phase:<15} Ray - local: median {statistics.median(each):+.1f} s "
              f"({min(each):+.1f} … {max(each):+.1f})")


def main(out: Path, repeats: int, sweep_too: bool) -> int:
    why = raycluster.why_not()
    if why is not None:
        print(f"not run: {why}")
        return 1
    log = out / "commands.log"
    ENV["TUNELAB_HISTORY"] = str(out / "history.db")  # the local runs alone teach the Ray plan
    print(f"load average at the start {os.getloadavg()[0]:.1f}; work in {out}", flush=True)
    cluster, started = raycluster.start_cluster()
    # the cluster's token (raycluster) for every command; the mode too, which Ray's own client (tunelab before
    # execute/ray_rest.py, for an A/B) needs to send it
    ENV.update(RAY_AUTH_TOKEN=raycluster.TOKEN, RAY_AUTH_MODE="token")
    try:
        same = sweep(out, cluster.address, log) if sweep_too else True
        overhead(out, cluster.address, log, repeats)
    finally:
        if started:
            cluster.stop()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0 if same else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="Times the one run is timed alone on each (default 3).")
    ap.add_argument("--smoke", action="store_true", help="one model, one rank, one epoch, one repeat (minutes)")
    ap.add_argument("--overhead-only", action="store_true",
                    help="only the one run alone on each executor (no sweep: no accuracies, no makespan)")
    args = ap.parse_args()
    if args.smoke:
        SMOKE["on"] = True
    sys.exit(main(args.out or Path(tempfile.mkdtemp(prefix="ray-demo-")), 1 if args.smoke else args.repeats,
                  not args.overhead_only))
