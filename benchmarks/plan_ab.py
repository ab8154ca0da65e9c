"""Two revisions of tunelab planning the same sweeps from the same measurements: whether a refactor changed what
tunelab predicts (issue 65: "the estimate_accuracy and deadline benchmarks give the same figures before and after").

A benchmark's prediction error mixes two things: what the code predicts from its measured inputs, and those inputs
(a calibration run, a probe), which a shared machine's load moves from one run to the next by more than most code
changes would. This holds the inputs still and varies only the code:
1. the measurements, once: estimate_accuracy's calibration configuration trained --calibration-repeats times and
   recorded in a history (its `calibrate`), and deadline's probes of both ways (its `probe`), each by the BEFORE
   revision (an older tree cannot read a newer history's columns);
2. each revision (`git archive REV` into OUT/trees, run on this environment's packages by PYTHONPATH) plans the
   held-out sweep of estimate_accuracy and both deadline sweeps (`tunelab plan SPEC --json`, in a process of its
   own) from its own copy of that history and one shared timing cache, with the machine's load while planning read
   as none (host/adapt.py) — the one live reading a plan makes besides the cached timings;
3. the plans compared field by field: every run's estimate, interval and source, the forecast and its placement,
   the deadline's verdict, the warnings and the markdown.

Prints one line per sweep, `identical` or the count of differing fields (the first few named); exit 1 when any
differs. The figures the two benchmarks print from these plans are then the same for both revisions, their measured
side being a run's training and evaluation, timed.

    python benchmarks/plan_ab.py --before REV [--after REV] [--out DIR] [--calibration-repeats 2] [--smoke]

--smoke: one calibration run on estimate_accuracy's smoke words, the deadline sweeps left out (seconds of work).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHOWN = 8  # differing fields named per sweep


def tree(rev: str, out: Path) -> Path:
    """The revision's files (git archive) under OUT/trees/REV, or REV itself where it is a directory holding a
    tunelab tree (a change not committed); its src/ goes first on PYTHONPATH."""
    if (Path(rev) / "src" / "tunelab").is_dir():
        return Path(rev).resolve()
    path = out / "trees" / rev.replace("/", "_")
    if not (path / "src" / "tunelab").is_dir():
        path.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=False)
        if archive.returncode != 0:
            raise SystemExit(f"git archive {rev}: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
    return path


def in_tree(src: Path, out: Path, history: Path, *args: str) -> subprocess.CompletedProcess:
    """This script's phase ARGS run by the revision whose tree is `src`, on `history` and the shared cache."""
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "TUNELAB_HISTORY": str(history),
           "TUNELAB_CACHE": str(out / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--phase", *args], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{src.name}: phase {args[0]} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def measure(out: Path, smoke: bool, repeats: int) -> list[Path]:
    """Phase `measure` (run by the BEFORE revision): the calibration and the probes into TUNELAB_HISTORY; the specs
    to plan. estimate_accuracy's and deadline's own code builds the inputs, as their benchmarks do."""
    sys.path.insert(0, str(BENCH))
    import estimate_accuracy as ea

    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model

    held_out = ea.HELD_OUT[:1] if smoke else ea.HELD_OUT
    for name in ea.used_models([ea.CALIBRATION, *held_out]):
        layers, hidden, seed = ea.MODELS[name]
        if not (out / "models" / name / "config.json").is_file():
            build_tiny_model(out / "models" / name, layers=layers, hidden=hidden, seed=seed)
    data = make_capitalization_dataset(6, ea.SMOKE_WORDS if smoke else ea.WORDS, out / "data", 0.8, seed=0)
    steps = 1 if smoke else 10
    ea.calibrate(out, data, steps, False, repeats)
    specs = [ea.write_spec(out, "held-out", held_out, data, steps)]
    if not smoke:
        import deadline as dl

        model, words = dl.build_inputs(out / "deadline", "tiny-4x256", 1000)
        ways = dl.write_specs(out / "deadline", model, words, [4, 16, 64], "2h", 10, False)
        for way in dl.WAYS:
            print(f"probed ({way}): {', '.join(dl.probe(ways[way], False))}", flush=True)
        specs += [ways[way] for way in dl.WAYS]
    return specs


def plan_quietly(spec: str) -> None:
    """Phase `plan`: `tunelab plan SPEC --json` with the load while planning read as none, in whichever revision
    runs it (both name the readings host/adapt.py; modules that imported them by name are patched too)."""
    import importlib
    import pkgutil

    import tunelab
    from tunelab.host import adapt

    names = ("load_while_planning", "planning_window")
    originals = {id(getattr(adapt, n)) for n in names}
    for info in pkgutil.walk_packages(tunelab.__path__, "tunelab."):
        if info.name.split(".")[1] in ("forecast", "estimate", "plan", "host", "scaffold", "cli", "execute"):
            try:
                importlib.import_module(info.name)
            except ImportError:  # an optional extra's module (ray, vllm) where it is not installed
                pass
    for module in list(sys.modules.values()):
        for n in names:
            if id(getattr(module, n, None)) in originals:
                setattr(module, n, lambda: None)
    from tunelab.cli.main import app

    app(["plan", spec, "--json"], standalone_mode=True)


def differences(a: object, b: object, path: str = "") -> list[str]:
    """The JSON paths at which two plans differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in (differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}/{k}"))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:80]!r} -> {str(b)[:80]!r}"]


def main(before: str, after: str, out: Path, repeats: int, smoke: bool) -> int:
    trees = {rev: tree(rev, out) for rev in (before, after)}
    measured = out / "history-measured.db"
    if not measured.is_file():
        listed = in_tree(trees[before], out, out / "history-measuring.db", "measure", str(out), str(int(smoke)),
                         str(repeats))
        print(listed.stdout.rstrip(), flush=True)
        (out / "history-measuring.db").rename(measured)
    specs = json.loads((out / "specs.json").read_text())
    same = True
    for spec in specs:
        plans = {}
        for rev, src in trees.items():
            history = out / f"history-{rev.replace('/', '_')}.db"
            shutil.copyfile(measured, history)  # each plans from its own copy: a newer tree adds columns
            plans[rev] = json.loads(in_tree(src, out, history, "plan", spec).stdout)
            (Path(spec).parent / f"plan-{rev.replace('/', '_')}.json").write_text(json.dumps(plans[rev], indent=1))
        diff = differences(plans[before], plans[after])
        runs = len(plans[after].get("runs", []))
        name = Path(spec).parent.relative_to(out)
        print(f"{name}: {runs} runs planned, " + ("identical" if not diff else f"{len(diff)} fields differ"))
        for d in diff[:SHOWN]:
            print(f"    {d}")
        same = same and not diff
    print(f"plans of {before} and {after} from the same measurements: {'the same' if same else 'DIFFERENT'}")
    return 0 if same else 1


def phase(argv: list[str]) -> int:
    if argv[0] == "measure":
        out = Path(argv[1])
        specs = measure(out, bool(int(argv[2])), int(argv[3]))
        (out / "specs.json").write_text(json.dumps([str(s) for s in specs]))
        return 0
    plan_quietly(argv[1])
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--phase":
        sys.exit(phase(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the revision before the change: a git rev, or a directory "
                    "holding a tunelab tree (its src/)")
    ap.add_argument("--after", default="HEAD", help="the revision after it, as --before (default HEAD)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--calibration-repeats", type=int, default=2, metavar="R")
    ap.add_argument("--smoke", action="store_true", help="one calibration on the smoke words; no deadline sweeps")
    a = ap.parse_args()
    out_dir = (a.out or Path(tempfile.mkdtemp(prefix="tunelab-plan-ab-"))).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    sys.exit(main(a.before, a.after, out_dir, 1 if a.smoke else a.calibration_repeats, a.smoke))
