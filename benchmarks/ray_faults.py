"""Ray node kills at seeded moments of a run (`benchmarks/faults.py --ray`): nothing may be lost or run twice.

A Ray cluster of the fault tests' own is started (tests/raycluster.py FAULTS: a head that runs no job and two
one-CPU workers, each in a network namespace; root needed). One uninterrupted run on it is the reference. Then each
scenario is a fresh experiment of the same spec followed by `tunelab run --wait`, whose training job's node is
SIGKILLed — its raylet, workers and the training they run — at each of the scenario's seeded steps, and started again
so the cluster has two workers for the resume. Each kill must end the job NODE_FAIL and the retry resume the run from
its last checkpoint on a node still there; at the end the run is checked against the reference
(benchmarks/fault_checks.py): every step logged once with the same counters and losses, the same summary and epoch
checkpoints, the same scores, the ledger whole — and one training job per kill plus the one that completed, each one
Ray job that trains, then evaluates (`tl-run-…`): an evaluation row of the same id, and over those jobs' logs the
training completed once and its evaluation started once, both in the last job's (fault_checks.py).
One line per kill; the last line reads `faults survived: N/N` (exit 1 unless all survived).

    python benchmarks/faults.py --ray [--seed 0] [--faults 20] [--out DIR]
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fault_checks as checks
import faults

from tunelab.execute.executor import JobKind
from tunelab.execute.ray_cluster import split_id
from tunelab.execute.ray_jobs import log_name
from tunelab.fsutil import read_json
from tunelab.ledger import store as ledger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import raycluster  # noqa: E402  (the tests' cluster, in network namespaces)

KILLS_PER_SCENARIO = 4
PACE_S = "0.4"  # seconds a step at least (tunelab.faults.pace_step): the kill lands mid-training
WORKERS = (1, 2)
TIMEOUT_S = 900


@dataclass
class Kill:
    number: int
    scenario: int
    step: int
    node: str = ""
    problems: list[str] = field(default_factory=list)

    def line(self, total: int) -> str:
        verdict = "survived" if not self.problems else "NOT survived: " + checks.describe(self.problems)
        return (f"fault {self.number:2d}/{total} [scenario {self.scenario}] ray node kill at step {self.step} "
                f"({self.node or 'no node seen'}): {verdict}")


def ray_spec(out: Path, address: str, kills: int) -> dict:
    spec = faults.make_spec(out, short=True)
    spec["training"]["checkpoint_every"] = 5
    spec["resources"] = {"executor": "ray", "address": address, "gpus_per_run": 0, "max_retries": kills}
    return spec


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_FAULT_STEP_S": PACE_S}


def _sweep(exp: Path, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab", "run", "--wait", str(exp)], env=_env(), stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def _train_jobs(exp: Path) -> list[dict]:
    return ledger.query(exp, "SELECT * FROM jobs WHERE kind = 'train' ORDER BY id")


def _job_logs(run_dir: Path, jobs: list[dict]) -> dict[str, str]:
    """Each training job's log (a job that trains, then evaluates: `ray-run-<submission id>.out`), by job id."""
    paths = {j["job_id"]: run_dir / log_name(JobKind.TRAIN, split_id(j["job_id"])[0]) for j in jobs
             if j["kind"] == "train"}
    return {jid: path.read_text(errors="replace") if path.is_file() else "" for jid, path in paths.items()}


def _wait(what, timeout_s: float = 300) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(0.2)
    return False


def kill_at(cluster: raycluster.RayCluster, exp: Path, run_dir: Path, kill: Kill, killed: set[str]) -> None:
    """Once the run's newest training job — not one killed already (the ledger and status.json say a killed job
    runs until the coordinator notices) — trains past `kill.step` on a node, that node goes (and comes back)."""
    def training_there() -> bool:
        jobs = _train_jobs(exp)
        status = read_json(run_dir / "status.json", default={}) or {}
        return bool(jobs and jobs[-1]["job_id"] not in killed and jobs[-1]["node"] and jobs[-1]["state"] == "RUNNING"
                    and status.get("attempt") == jobs[-1]["attempt"] and (status.get("step") or 0) >= kill.step)

    if not _wait(training_there):
        kill.problems.append(f"the run never trained past step {kill.step} on a node")
        return
    kill.node = _train_jobs(exp)[-1]["node"]
    killed.add(_train_jobs(exp)[-1]["job_id"])
    node = next(i for i in WORKERS if cluster.layout.node_ip(i) == kill.node)
    cluster.kill_node(node)
    cluster.start_node(node)


def run_scenario(cluster: raycluster.RayCluster, number: int, kills: list[Kill], spec: dict, ref: Path,
                 out: Path) -> None:
    root = out / f"scenario-{number}"
    cfg = faults.scaffold_experiment(root, spec)
    exp, run_dir = Path(cfg.experiment_dir), cfg.run_dir
    with open(root / "commands.log", "w") as log:
        sweep = _sweep(exp, log)
        try:
            killed: set[str] = set()
            for kill in kills:
                kill_at(cluster, exp, run_dir, kill, killed)
            code = sweep.wait(timeout=TIMEOUT_S)
        finally:
            sweep.kill()
    problems = [] if code == 0 else [f"`tunelab run --wait` exited {code} (see {root}/commands.log)"]
    problems += checks.check_training(ref, run_dir) + checks.check_eval(ref, run_dir)
    problems += checks.check_ledger(exp, {run_dir.name: run_dir})
    failures = [j["failure"] for j in _train_jobs(exp)]
    if failures != ["node_fail"] * len(kills) + ["completed"]:
        problems.append(f"training jobs ended {failures}, not one node_fail a kill and then completed")
    jobs = ledger.query(exp, "SELECT * FROM jobs ORDER BY id")
    problems += checks.check_one_job_each_attempt(jobs, _job_logs(run_dir, jobs))
    for kill in kills:
        kill.problems += problems


def reference(cluster: raycluster.RayCluster, spec: dict, out: Path) -> Path:
    """The uninterrupted run on the same cluster (same threads: its losses are the ones a resume must give)."""
    cfg = faults.scaffold_experiment(out / "reference", spec)
    with open(out / "reference.log", "w") as log:
        code = _sweep(Path(cfg.experiment_dir), log).wait(timeout=TIMEOUT_S)
    if code != 0:
        raise SystemExit(f"the reference run failed (exit {code}): {out / 'reference.log'}")
    return cfg.run_dir


def main(out: Path, n: int, seed: int) -> int:
    why = raycluster.why_not()
    if why is not None:
        print(f"Ray node kills not run: {why}")
        return 1
    t0 = time.monotonic()
    cluster, started = raycluster.start_cluster(raycluster.FAULTS)
    try:
        spec = ray_spec(out, cluster.address, KILLS_PER_SCENARIO)
        ref = reference(cluster, spec, out)
        steps = read_json(ref / "summary.json")["steps"]
        rng = random.Random(seed)
        kills = [Kill(i + 1, i // KILLS_PER_SCENARIO + 1, 0) for i in range(n)]
        for number in sorted({k.scenario for k in kills}):
            group = [k for k in kills if k.scenario == number]
            for kill, step in zip(group, sorted(rng.sample(range(2, steps), len(group)))):
                kill.step = step
            run_scenario(cluster, number, group, spec, ref, out)
            for kill in group:
                print(kill.line(n), flush=True)
    finally:
        if started:
            cluster.stop()
    survived = sum(not k.problems for k in kills)
    print(f"kind ray/node: survived {survived}/{n}")
    print(f"time: {time.monotonic() - t0:.0f} s")
    print(f"faults survived: {survived}/{n}")
    return 0 if survived == n else 1
