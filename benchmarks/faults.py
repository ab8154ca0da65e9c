"""kill -9 at seeded random moments of a sweep, then the normal commands again; nothing may be lost.

One uninterrupted reference run (tiny model, capitalization data, 2 epochs with validation) is made
in this process. Then each scenario is a fresh experiment of the same spec, whose commands are run
for real (`tunelab run`, `tunelab eval`, `tunelab report`, subprocesses) with kill points armed
(src/tunelab/faults.py): the process SIGKILLs itself at the chosen moment:

- train: mid-step (after backward, before the optimizer step), mid checkpoint save (adapter written,
  optimizer and trainer state not), between the trainer state and the epoch_N publish, during the
  token-counters write, during the summary write;
- ingest: the coordinator in the middle of its ledger transaction (history already recorded);
- eval: mid-generation, during a scores.json write;
- report: after a figure, during report.md or report.html.

Each killed command is rerun until it succeeds, then the experiment is checked against the reference
(benchmarks/fault_checks.py): metrics.jsonl has every step exactly once with the same token counters,
summary and epoch checkpoints equal, the ledger has no duplicate or missing row, the history holds the
run once, eval scores equal the reference's and the report agrees with the files.
One line per fault; the last line reads `faults survived: N/N` (exit 1 unless all survived).

    python benchmarks/faults.py [--seed 0] [--faults 20] [--short] [--out DIR]
    python benchmarks/faults.py --ray [--seed 0] [--faults 20]    # Ray node kills (benchmarks/ray_faults.py)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fault_checks as checks  # noqa: E402

TRAIN_KINDS = ("step", "save", "publish", "counters", "summary")  # in the order they happen at one step
EVAL_KINDS = ("generate", "scores")
REPORT_KINDS = ("figure", "markdown", "html")
# which coordinator is killed in its ledger transaction: `report` is none, since a run is ingested once per change
# (ledger/stamps.py) and the evaluation before it has ingested what the report would read
INGEST_HOSTS = ("run", "eval")
# Stages of the faults of one scenario, in order: a scenario holds at most 10 (4 train moments must fit).
FULL_SLOTS = ("train", "eval", "report", "ingest", "train", "train", "ingest", "eval", "report", "train")
SHORT_SLOTS = ("train", "ingest")  # one `tunelab run`: its job killed in the counters write, itself mid-ingest
TIMEOUT_S = 900


@dataclass
class Fault:
    number: int
    scenario: int
    stage: str
    kind: str = ""
    point: str = ""  # the TUNELAB_FAULT_KILL value
    fired: bool = False
    problems: list[str] = field(default_factory=list)
    unreached: list[str] = field(default_factory=list)  # planned points its command never reached (re-planned)

    def line(self, total: int) -> str:
        if not self.fired and not self.problems:
            verdict = "NOT REACHED (no kill happened, nothing was lost)"
        else:
            verdict = "survived" if not self.problems else "NOT survived: " + checks.describe(self.problems)
        replanned = f" (re-planned: {', '.join(self.unreached)} not reached)" if self.unreached else ""
        return (f"fault {self.number:2d}/{total} [scenario {self.scenario}] {self.stage:6} {self.kind:9} "
                f"kill -9 at {self.point}{replanned}: {verdict}")


@dataclass
class Setup:
    out: Path
    short: bool
    spec: dict
    ref_run: Path = Path()
    ref_figures: int = 0
    saves: list[int] = field(default_factory=list)
    total_steps: int = 0


@contextlib.contextmanager
def env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_spec(out: Path, short: bool) -> dict:
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model

    model = out / "models" / "tiny"
    if not (model / "config.json").is_file():
        build_tiny_model(model, layers=2, hidden=64, seed=0)
    data = make_capitalization_dataset(5, 100 if short else 200, out / "data", 0.8, seed=0)
    return {
        "name": "faults", "controls": False,
        "models": [{"name": "tiny", "path": str(model)}],
        "datasets": [{"name": "caps", "path": str(data)}],
        "prompt": "Capitalize: {input}",
        "factors": {"lora_rank": [4]},
        "training": {"epochs": 2, "learning_rate": 0.002, "batch_size": 8, "max_seq_len": 32,
                     "modules_to_save": ["embed_tokens", "lm_head"], "logging_steps": 5,
                     "validation_every_steps": 5 if short else 10},
        "eval": {"max_tokens": 8, "epochs": "all", "limit": 8 if short else 16},
    }


def scaffold_experiment(root: Path, spec: dict):
    from tunelab.scaffold.write import scaffold

    path = root / "exp" / "experiment.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return scaffold(path).runs[0]


def reference(setup: Setup) -> None:
    """The uninterrupted run (in this process), evaluated and reported, that every scenario must equal."""
    from rich.console import Console

    from tunelab.evaluate.sweep import evaluate_experiment
    from tunelab.fsutil import read_json
    from tunelab.report.build import build_report
    from tunelab.train.job import train

    root = setup.out / "reference"
    with env(TUNELAB_HISTORY=str(root / "history.db"), HF_HUB_OFFLINE="1"), \
            open(setup.out / "reference.log", "w") as log, contextlib.redirect_stdout(log):
        cfg = scaffold_experiment(root, setup.spec)
        train(cfg)
        if not setup.short:  # (the short form kills no eval and no report: no figures to count)
            evaluate_experiment(cfg.experiment_dir, console=Console(file=log))
            setup.ref_figures = len(build_report(cfg.experiment_dir).figures)
    setup.ref_run = cfg.run_dir
    setup.total_steps = read_json(cfg.run_dir / "summary.json")["steps"]
    setup.saves = sorted(int(p.name.split("-")[1]) for p in (cfg.run_dir / "trainer_state").glob("checkpoint-*"))


def train_point(kind: str, step: int, run: str) -> str:
    return {"step": f"train.step:{step}", "save": f"train.save:{step}", "publish": f"train.publish:{step}",
            "counters": f"write:checkpoint-{step}/tunelab_counters.json",
            "summary": f"write:{run}/summary.json"}[kind]


def draw_train(rng: random.Random, faults: list[Fault], setup: Setup, run: str) -> None:
    """Distinct train moments in the order they happen, so each rerun (which resumes before the last
    kill) reaches the next one. The short form kills during the counters write (the save that completes
    a checkpoint), at a seeded one of the saves."""
    kinds = ["counters"] if setup.short else [rng.choice(TRAIN_KINDS) for _ in faults]
    moments: set[tuple[int, int, str]] = set()
    for kind in kinds:
        while True:
            step = {"step": rng.randint(1, setup.total_steps), "summary": setup.total_steps}.get(
                kind, rng.choice(setup.saves))
            moment = (step, TRAIN_KINDS.index(kind), kind)
            if moment not in moments:
                moments.add(moment)
                break
            kind = rng.choice(TRAIN_KINDS)
    for fault, (step, _, kind) in zip(faults, sorted(moments)):
        fault.kind, fault.point = kind, train_point(kind, step, run)


def launch(args: list[str], root: Path, kill: list[str], log) -> tuple[int, list[str]]:
    """One tunelab command as a user runs it; returns (exit code, the kill points that fired)."""
    fired = root / "fired.txt"
    fired.unlink(missing_ok=True)
    extra = {"HF_HUB_OFFLINE": "1", "TUNELAB_HISTORY": str(root / "history.db"),
             "TUNELAB_FAULT_KILL": ",".join(kill), "TUNELAB_FAULT_FIRED": str(fired)}
    log.write(f"\n$ {' '.join(['tunelab', *args])}    # kill at: {kill or 'nothing'}\n")
    log.flush()
    code = subprocess.run([sys.executable, "-m", "tunelab", *args], env={**os.environ, **extra}, stdout=log,
                          stderr=subprocess.STDOUT, timeout=TIMEOUT_S).returncode
    points = fired.read_text().split() if fired.is_file() else []
    return code, points[::2]


def until_done(args: list[str], root: Path, log, problems: list[str]) -> None:
    """Rerun a command, as a user would after a kill, until it succeeds (it should at once)."""
    for _ in range(3):
        if launch(args, root, [], log)[0] == 0:
            return
    problems.append(f"`tunelab {' '.join(args[:1])}` kept failing after the kills (see {root}/commands.log)")


def remaining_targets(run_dir: Path, epochs: int) -> int:
    return sum(not (run_dir / "eval" / f"epoch_{e}" / "exact_match" / "scores.json").is_file()
               for e in range(epochs))


def arm(fault: Fault, rng: random.Random, setup: Setup, run_dir: Path) -> None:
    """Choose an eval, report or ingest fault's moment (from the experiment's state now)."""
    if fault.stage == "eval":
        fault.kind = rng.choice(EVAL_KINDS)
        nth = rng.randint(1, max(1, remaining_targets(run_dir, setup.spec["training"]["epochs"])))
        fault.point = ("eval.generate" if fault.kind == "generate" else "write:exact_match/scores.json") + f"#{nth}"
    elif fault.stage == "report":
        fault.kind = rng.choice(reachable_report_kinds(run_dir.parent.parent / "report"))
        fault.point = {"figure": f"report.figure#{rng.randint(1, max(1, setup.ref_figures))}",
                       "markdown": "write:report/report.md", "html": "write:report/report.html"}[fault.kind]
    else:
        fault.point = f"ledger.ingest:{run_dir.name}"


def reachable_report_kinds(report_dir: Path) -> list[str]:
    """The report's kill points that `tunelab report` surely reaches now. Figures are drawn on every build;
    report.md and report.html are written only when their text changed (fsutil.atomic_write_text leaves a file
    that holds it alone): once a killed build published one, a rebuild writes it again only if the minute in its
    "Generated" line moved on (the report stage runs after every evaluation), so no kill is planned there."""
    return [kind for kind in REPORT_KINDS
            if kind == "figure" or not (report_dir / f"report.{'md' if kind == 'markdown' else kind}").is_file()]


def plan_launches(faults: list[Fault], short: bool, rng: random.Random) -> dict[str, list[list[Fault]]]:
    """Per stage, the killed launches: one fault each; an ingest fault kills the coordinator of a launch
    of its host command (`tunelab run` alongside a training kill, or eval/report on their own)."""
    stages: dict[str, list[list[Fault]]] = {"run": [], "eval": [], "report": []}
    for f in faults:
        if f.stage == "train":
            stages["run"].append([f])
        elif f.stage in ("eval", "report"):
            stages[f.stage].append([f])
    for f in (f for f in faults if f.stage == "ingest"):
        f.kind = "run" if short else rng.choice(INGEST_HOSTS)
        spare = [group for group in stages["run"] if len(group) == 1] if f.kind == "run" else []
        if spare:
            rng.choice(spare).append(f)
        else:
            stages[f.kind].append([f])
    return stages


def run_scenario(number: int, faults: list[Fault], setup: Setup, seed: int) -> None:
    """One experiment killed at each of `faults` in turn, every stage rerun to the end, then checked."""
    rng = random.Random(f"{seed}:{number}")
    root = setup.out / f"scenario-{number}"
    cfg = scaffold_experiment(root, setup.spec)
    exp, run_dir = Path(cfg.experiment_dir), cfg.run_dir
    draw_train(rng, [f for f in faults if f.stage == "train"], setup, run_dir.name)
    stages = plan_launches(faults, setup.short, rng)
    problems: list[str] = []
    commands = {"run": ["run", str(exp)], "eval": ["eval", str(exp)], "report": ["report", str(exp)]}
    with open(root / "commands.log", "a") as log:
        for stage in ("run", "eval", "report"):
            if stage == "eval" and setup.short:
                continue
            for group in stages[stage]:
                killed_launch(commands[stage], group, rng, setup, run_dir, root, log)
            if stage == "report" and setup.short and not stages[stage]:
                _report_in_process(exp, root)  # nothing killed there: the command's function, minus a start-up
            else:
                until_done(commands[stage], root, log, problems)
    problems += verify(setup, exp, run_dir, root)
    for fault in faults:
        fault.problems += problems


REPLANS = 3  # a kill whose point its command did not reach is planned again this many times


def killed_launch(command: list[str], group: list[Fault], rng: random.Random, setup: Setup, run_dir: Path,
                  root: Path, log) -> None:
    """One launch killed at each fault of `group`. A command that ended well without reaching an eval, report or
    ingest point lost nothing there: the point is recorded as not reached and another is drawn from the state
    now. A train point is reachable by construction (draw_train), so missing one is a problem, as is a command
    that fails without its kill."""
    for attempt in range(REPLANS):
        for fault in group:
            if not fault.point:
                arm(fault, rng, setup, run_dir)
        code, fired = launch(command, root, [f.point for f in group if not f.fired], log)
        for fault in (f for f in group if not f.fired):
            fault.fired = fault.point.split("#")[0] in fired  # a kill records its point, not the count
        missed = [f for f in group if not f.fired]
        if code != 0 and fired and missed:  # one kill ended the launch before the others' points: again
            continue
        for fault in missed:
            if code != 0 or fault.stage == "train":
                fault.problems.append(f"the kill did not happen (exit {code})")
            elif attempt + 1 < REPLANS:
                fault.unreached.append(fault.point)
                fault.point = ""
        if not any(f.point == "" for f in group):  # nothing to plan again
            return


def _report_in_process(exp: Path, root: Path) -> None:
    from tunelab.report.build import build_report

    with env(TUNELAB_HISTORY=str(root / "history.db")):
        build_report(exp)


def verify(setup: Setup, exp: Path, run_dir: Path, root: Path) -> list[str]:
    run_dirs = {run_dir.name: run_dir}
    problems = checks.check_training(setup.ref_run, run_dir)
    if not setup.short:
        problems += checks.check_eval(setup.ref_run, run_dir)
    problems += checks.check_ledger(exp, run_dirs)
    problems += checks.check_history(root / "history.db", run_dirs)
    problems += checks.check_report(exp, run_dirs)
    return problems


def schedule(n: int, short: bool) -> list[list[Fault]]:
    slots = SHORT_SLOTS if short else FULL_SLOTS
    scenarios: list[list[Fault]] = []
    for i in range(n):
        if i % len(slots) == 0:
            scenarios.append([])
        scenarios[-1].append(Fault(i + 1, len(scenarios), slots[i % len(slots)]))
    return scenarios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="Seed of every random choice (moments, kinds).")
    ap.add_argument("--faults", type=int, default=None, help="How many kills (default: 20; --short: 2).")
    ap.add_argument("--short", action="store_true", help="CI form: smaller data, 2 kills (counters write, ledger ingest), no eval stage.")
    ap.add_argument("--out", type=Path, default=None, help="Work directory (default: a new temp dir).")
    ap.add_argument("--ray", action="store_true", help="Ray node kills instead, on a local Ray cluster "
                    "(benchmarks/ray_faults.py; needs root for its network namespaces).")
    args = ap.parse_args(argv)
    n = args.faults or (len(SHORT_SLOTS) if args.short else 20)
    out = (args.out or Path(tempfile.mkdtemp(prefix="tunelab-faults-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with env(TUNELAB_HISTORY=str(out / "planning-history.db")):  # never the user's history
        if args.ray:
            import ray_faults  # its kind only: the tests' Ray cluster, started by it

            return ray_faults.main(out, args.faults or 20, args.seed)
        return _run_all(out, n, args.short, args.seed)


def _run_all(out: Path, n: int, short: bool, seed: int) -> int:
    t0 = time.monotonic()
    setup = Setup(out, short, make_spec(out, short))
    reference(setup)
    print(f"reference: {setup.total_steps} steps, checkpoints at {setup.saves}; seed {seed}; dir {out}",
          flush=True)
    faults = []
    for number, group in enumerate(schedule(n, short), start=1):
        run_scenario(number, group, setup, seed)
        leftovers = checks.leftover_temp_files(out / f"scenario-{number}" / "exp")
        for fault in group:
            print(fault.line(n), flush=True)
        print(f"scenario {number}: {len(leftovers)} temp file(s) of interrupted writes left (never read)",
              flush=True)
        faults += group
    tried = [f for f in faults if f.fired or f.problems]
    survived = sum(not f.problems for f in tried)
    for kind in sorted({(f.stage, f.kind) for f in tried}):  # one line per kind of fault
        of_kind = [f for f in tried if (f.stage, f.kind) == kind]
        print(f"kind {kind[0]}/{kind[1]}: survived {sum(not f.problems for f in of_kind)}/{len(of_kind)}")
    unreached = len(faults) - len(tried)
    print(f"time: {time.monotonic() - t0:.0f} s")
    print(f"replanned kill points (not reached, nothing lost): {sum(len(f.unreached) for f in faults)}")
    if unreached:
        print(f"faults not reached after {REPLANS} plans: {unreached} (not counted below)")
    print(f"faults survived: {survived}/{len(tried)}")
    return 0 if survived == len(tried) and not unreached else 1


if __name__ == "__main__":
    sys.exit(main())
