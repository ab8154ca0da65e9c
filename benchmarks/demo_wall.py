"""The demo's wall time against an earlier commit's, measured one after the other on this machine (issue 52 item 5:
the demo in at most half the wall time of commit 1036b34's, the same runs reaching the same accuracy).

    python benchmarks/demo_wall.py [--baseline 1036b34] [--repeats 2] [--json PATH]
    python benchmarks/demo_wall.py --check EXPERIMENT   # the accuracies it reads, from a finished experiment

Each demo is `python -m tunelab demo` in a fresh output directory, with a fresh history, timing cache and user
config (first contact, as a new user runs it), the baseline's source checked out in a git worktree and put first
on PYTHONPATH (its jobs inherit it), the two interleaved (baseline, current, baseline, …). Printed per demo: its
wall, the load average before it, its phases as the demo's rules mark them, and every run's exact-match accuracy;
then the medians, their spread, and `demo: current ÷ baseline = 0.48x (wall, median of 2)`. Run it with nothing
else of yours on the machine: a timing beside other work is not a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASE = re.compile(r"^─+ (.+?) ─+$")


def worktree(commit: str, where: Path) -> Path:
    """The baseline's source tree (a detached worktree; reused when it is there at that commit)."""
    if not (where / "src" / "tunelab").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(where), commit],
                       check=True, capture_output=True)
    return where / "src"


def accuracies(experiment: Path) -> dict[str, float]:
    """Each run's exact-match accuracy on its last evaluated checkpoint, from its scores.json files."""
    out: dict[str, float] = {}
    for path in sorted(experiment.glob("*/*/eval/**/scores.json")):  # runs/ and controls/
        value = _accuracy(json.loads(path.read_text()))
        if value is not None:
            out[path.relative_to(experiment).parts[1]] = value
    return out


def _accuracy(data: dict) -> float | None:
    for key in ("accuracy", "exact_match/accuracy"):
        if isinstance(data.get(key), (int, float)):
            return float(data[key])
    metrics = data.get("metrics") or {}
    for name, value in metrics.items():
        if name.endswith("accuracy") and isinstance(value, (int, float)):
            return float(value)
    return None


def one_demo(label: str, src: Path | None, scratch: Path) -> dict:
    """One demo, from a clean slate; its wall, phases (seconds from start at each rule) and accuracies."""
    out = Path(tempfile.mkdtemp(prefix=f"demo-{label}-", dir=scratch))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TUNELAB_CPUS")}
    env.update(HF_HUB_OFFLINE="1", TUNELAB_HISTORY=str(out / "history.db"), TUNELAB_CACHE=str(out / "cache"),
               XDG_CONFIG_HOME=str(out / "config"), XDG_CACHE_HOME=str(out / "xdg-cache"))
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    load = os.getloadavg()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "demo", "--out", str(out / "demo")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    phases, lines = {}, []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        m = PHASE.match(line.strip())
        if m:
            phases[m.group(1).strip()] = round(time.monotonic() - start, 1)
    code = proc.wait()
    wall = round(time.monotonic() - start, 1)
    if code != 0:
        raise SystemExit(f"{label} demo failed ({code}):\n" + "".join(lines[-30:]))
    return {"label": label, "wall_s": wall, "load_before": [round(x, 2) for x in load], "phases": phases,
            "accuracy": accuracies(out / "demo" / "experiment"), "experiment": str(out / "demo" / "experiment")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="1036b34", help="the commit to compare with (default 1036b34)")
    ap.add_argument("--repeats", type=int, default=2, help="demos of each, interleaved (default 2)")
    ap.add_argument("--json", type=Path, help="write every demo's figures here")
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()), help="where demos write")
    ap.add_argument("--check", type=Path, metavar="EXPERIMENT",
                    help="run no demo: print the accuracies read from a finished experiment (the smoke's check)")
    args = ap.parse_args()
    if args.check is not None:
        print(json.dumps(accuracies(args.check), sort_keys=True))
        return
    base_src = worktree(args.baseline, args.scratch / f"tunelab-{args.baseline}")
    demos = []
    for i in range(args.repeats):
        for label, src in (("baseline", base_src), ("current", None)):
            d = one_demo(label, src, args.scratch)
            demos.append(d)
            print(f"{label:9} #{i + 1}  wall {d['wall_s']:7.1f} s  load {d['load_before']}  phases {d['phases']}")
            print(f"{'':13}accuracy {d['accuracy']}")
    walls = {k: [d["wall_s"] for d in demos if d["label"] == k] for k in ("baseline", "current")}
    for k, w in walls.items():
        print(f"{k:9} median {statistics.median(w):7.1f} s  spread {min(w):.1f}-{max(w):.1f} s  (n={len(w)})")
    ratio = statistics.median(walls["current"]) / statistics.median(walls["baseline"])
    print(f"demo: current ÷ baseline = {ratio:.2f}x (wall, median of {args.repeats}; baseline {args.baseline})")
    if args.json:
        args.json.write_text(json.dumps({"baseline": args.baseline, "repeats": args.repeats, "demos": demos,
                                         "ratio": round(ratio, 3), "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
