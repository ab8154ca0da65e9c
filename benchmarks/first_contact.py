"""First contact: the demo on a fresh machine (empty history, timing cache and user config), its every run's
predicted training and evaluation time against what it measured (issue 54's goal: every training time within
25 % of its P50, P90/P10 ≤ 2.5, coverage reported).

    python benchmarks/first_contact.py [--repeats 2] [--json PATH] [--scratch DIR]
    python benchmarks/first_contact.py --check EXPERIMENT   # its rows as JSON, read from a finished experiment

Each demo is `python -m tunelab demo` from a clean slate (benchmarks/demo_wall.py's `one_demo`: a new user's first
run); the figures are what its report's "Predicted, then checked" reads (report/predicted.py: run.yaml's estimate,
its P10–P90, and summary.json / scores.json's measurements). Printed per run and figure: the P50, the interval, the
measurement, measured ÷ predicted, inside or not; then per figure the largest error, how many within 25 %, the
median P90/P10 and the coverage. Run it with nothing else of yours on the machine: a timing beside other work is
not a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_wall import one_demo  # noqa: E402

GOAL_ERROR = 0.25  # every training time within this of its P50
GOAL_WIDTH = 2.5  # P90 / P10 at most


@dataclass(frozen=True)
class Row:
    demo: int
    run: str
    what: str  # training or evaluation
    p50_s: float
    p10_s: float | None
    p90_s: float | None
    measured_s: float

    @property
    def ratio(self) -> float:
        return self.measured_s / self.p50_s

    @property
    def inside(self) -> bool | None:
        return None if self.p10_s is None or self.p90_s is None else self.p10_s <= self.measured_s <= self.p90_s

    @property
    def width(self) -> float | None:
        return self.p90_s / self.p10_s if self.p10_s and self.p90_s else None


def checked_rows(experiment: Path, demo: int) -> list[Row]:
    """Every fine-tuned run's training and evaluation check with a prediction and a measurement."""
    from tunelab.report.data import gather
    from tunelab.report.predicted import run_checks

    out = []
    for run in gather(experiment).runs:
        for c in run_checks(run).checks:
            if c.what in ("training", "evaluation") and c.predicted and c.measured is not None and c.judged:
                span = c.span
                out.append(Row(demo, run.config.name, c.what, c.predicted, span.p10_s if span else None,
                               span.p90_s if span else None, c.measured))
    return out


def summary_lines(rows: list[Row]) -> list[str]:
    lines = []
    for what in ("training", "evaluation"):
        mine = [r for r in rows if r.what == what]
        if not mine:
            continue
        errors = [abs(r.ratio - 1) for r in mine]
        inside = [r.inside for r in mine if r.inside is not None]
        widths = [w for r in mine if (w := r.width) is not None]
        within = sum(e <= GOAL_ERROR for e in errors)
        lines.append(f"{what}: {within} of {len(mine)} within {GOAL_ERROR:.0%} of the P50 (largest error "
                     f"{max(errors):.0%}, median {statistics.median(errors):.0%}; measured ÷ predicted "
                     f"{min(r.ratio for r in mine):.2f}–{max(r.ratio for r in mine):.2f}); coverage {sum(inside)} of "
                     f"{len(inside)} inside P10–P90; median P90/P10 ×"
                     + (f"{statistics.median(widths):.2f}" if widths else "—"))
    return lines


def print_rows(rows: list[Row]) -> None:
    print(f"{'demo':>4}  {'run':28} {'figure':10} {'P50 s':>7} {'P10–P90 s':>15} {'measured s':>10} {'ratio':>6} in")
    for r in rows:
        span = f"{r.p10_s:.1f}–{r.p90_s:.1f}" if r.p10_s is not None and r.p90_s is not None else "—"
        print(f"{r.demo:>4}  {r.run:28} {r.what:10} {r.p50_s:7.1f} {span:>15} {r.measured_s:10.1f} {r.ratio:6.2f} "
              f"{'yes' if r.inside else 'no' if r.inside is False else '—'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="demos, each from a clean slate (default 2)")
    ap.add_argument("--json", type=Path, help="write every row here")
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()), help="where demos write")
    ap.add_argument("--check", type=Path, metavar="EXPERIMENT",
                    help="run no demo: the rows read from a finished experiment (the smoke's check)")
    args = ap.parse_args()
    if args.check is not None:  # machine-readable: the smoke compares it with run.yaml and summary.json
        rows = checked_rows(args.check, 0)
        print(json.dumps({"rows": [_as_json(r) for r in rows], "summary": summary_lines(rows)}))
        return
    rows, demos = [], []
    for i in range(args.repeats):
        d = one_demo("current", None, args.scratch)
        demos.append({k: d[k] for k in ("wall_s", "load_before", "experiment")})
        print(f"demo #{i + 1}: wall {d['wall_s']:.1f} s, load average before {d['load_before']}", flush=True)
        rows += checked_rows(Path(d["experiment"]), i + 1)
    print_rows(rows)
    print(f"machine: {os.cpu_count()} CPUs; load average now {[round(x, 2) for x in os.getloadavg()]}")
    print("\n".join(summary_lines(rows)))
    if args.json:
        args.json.write_text(json.dumps({"demos": demos, "rows": [_as_json(r) for r in rows], "cpus": os.cpu_count(),
                                         "summary": summary_lines(rows)}, indent=1))


def _as_json(r: Row) -> dict:
    return vars(r) | {"ratio": round(r.ratio, 4), "inside": r.inside}


if __name__ == "__main__":
    main()
