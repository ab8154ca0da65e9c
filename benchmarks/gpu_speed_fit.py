"""The GPU step model (forecast/gpustep.py) checked on the measured rows it ships: each row predicted by the fit on
the others (leave-one-out), its error, and whether the interval a plan would report around that prediction covers
what ran — the interval's own width from the leave-one-out of those other rows (one level deeper), widened as
forecast/interval.py widens a `carried` speed. Printed for the quadrature sum the planner uses (power 2) and for
the plain sum F + G (power 1), the form the module argues against; and the old first-contact figure (the FLOPs at
DEFAULT_MFU) beside them. No GPU needed: it reads the committed rows.

    python benchmarks/gpu_speed_fit.py

The rows are fitted and checked on the same lease's measurements: this is the model's spread on those shapes, not
a held-out test. The held-out check is the next lease's 8B rows (benchmarks/gpu_truth.py's table on them).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

from tunelab.catalog import resolve_architecture
from tunelab.forecast.gpustep import GpuPrior, committed_priors, fit_points, leave_one_out, points_of, rms
from tunelab.forecast.interval import time_range
from tunelab.forecast.speed import model_tokens_per_s
from tunelab.rundir.estimate import SourceKind

GOAL_ERROR = 0.25  # issue 64's goal for first-contact tokens/s (on rows the priors were not taken from)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the kit's modules, beside this one
STEPS = 1000  # the interval of a run of this many steps (the plan rounds intervals to 0.1 s)


def covered(prior: GpuPrior, index: int, power: int) -> tuple[float, bool, float]:
    """Row `index` held out: (measured ÷ predicted, inside the interval a plan would give it, that interval's
    P90 / P10), the interval's spread from the leave-one-out of the other rows."""
    peak = prior.gpu.bf16_tflops
    points = points_of(prior.rows.rows, peak)
    rest = points[:index] + points[index + 1:]
    held = points[index]
    predicted = fit_points(rest, peak, power).predict(held)
    spread = rms(leave_one_out(rest, peak, power))
    interval = time_range(predicted * STEPS, SourceKind.CARRIED, spread)
    return held.step_s / predicted, interval.covers(held.step_s * STEPS), interval.p90_s / interval.p10_s


def report(prior: GpuPrior, power: int) -> list[str]:
    rows, peak = prior.rows.rows, prior.gpu.bf16_tflops
    fit = fit_points(points_of(rows, peak), peak, power)
    form = "√(F² + G²)" if power == 2 else "F + G"
    eff = ", ".join(f"{g} {e:.3f}" for g, e in sorted(fit.efficiency.items()))
    out = [f"{form}: fitted on all {len(rows)}: f = {fit.fixed_per_op_s * 1e6:.2f} µs per operator, "
           f"efficiency {eff}",
           "| row | tokens/step | measured tokens/s | leave-one-out tokens/s | error | inside P10–P90 | P90/P10 |",
           "|---|---|---|---|---|---|---|"]
    errors, inside, widths = [], 0, []
    for i, r in enumerate(rows):
        ratio, ok, width = covered(prior, i, power)
        # tokens/s is tokens ÷ step: predicted ÷ measured tokens/s = measured ÷ predicted step
        errors.append(ratio - 1)
        inside += ok
        widths.append(width)
        out.append(f"| {r.name} | {r.tokens_per_step:,.0f} | {r.tokens_per_s:,.0f} | {r.tokens_per_s * ratio:,.0f} "
                   f"| {(ratio - 1) * 100:+.1f} % | {'yes' if ok else 'no'} | {width:.2f} |")
    out.append(f"tokens/s error (predicted − measured) / measured: median |error| "
               f"{statistics.median(abs(e) for e in errors) * 100:.1f} %, largest {max(errors, key=abs) * 100:+.1f} %, "
               f"{sum(abs(e) <= GOAL_ERROR for e in errors)} of {len(errors)} within {GOAL_ERROR * 100:.0f} %, "
               f"leave-one-out σ {rms([math.log1p(e) for e in errors]):.3f}; {inside} of {len(rows)} inside their "
               f"P10–P90 (median P90/P10 {statistics.median(widths):.2f})")
    return out


def old_first_contact(prior: GpuPrior) -> str:
    """What the FLOPs model at the assumed MFU predicted for the same rows (first contact before this model)."""
    ratios = [model_tokens_per_s(resolve_architecture(r.arch), prior.gpu, r.seq_len) / r.tokens_per_s
              for r in prior.rows.rows]
    return (f"the FLOPs model at its assumed MFU (first contact before): {min(ratios):.1f}–{max(ratios):.1f}× the "
            "measured tokens/s")


def held_out(prior: GpuPrior) -> list[str]:
    """The kit's rows the fit was not taken from (benchmarks/gpu_truth_grid.py), as a plan would price them now:
    written down before they are measured, so the next lease's table checks them. QLoRA's rows are priced as the
    plan prices them, like bf16 ones: the step model holds no dequantizing cost."""
    from gpu_truth_grid import gpu_grid
    from gpu_truth_predict import predicted_speed, resolved_attention

    fitted = {r.name for r in prior.rows.rows}
    out = ["| kit row | shape | predicted tokens/s | step |", "|---|---|---|---|"]
    for case in gpu_grid():
        if case.name in fitted or case.max_batch:  # a max-batch search times no steady step
            continue
        speed = predicted_speed(case, prior.gpu, resolved_attention(case, None))
        out.append(f"| {case.name} | {case.title} | {speed.tokens_per_s:,.0f} | {speed.step_s:.3f} s |")
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="the same run (seconds: it reads the committed rows)")
    ap.parse_args(argv)
    for prior in committed_priors():
        print(f"{prior.gpu.name}: {len(prior.rows.rows)} rows measured {prior.rows.measured_on} "
              f"({prior.rows.device}; dense bf16 peak {prior.gpu.bf16_tflops:g} TFLOPS)")
        for power in (2, 1):
            print("\n".join(report(prior, power)))
            print()
        print(old_first_contact(prior))
        print(f"\nthe kit's other rows on {prior.gpu.name}, predicted before they are measured (the held-out check):")
        print("\n".join(held_out(prior)))


if __name__ == "__main__":
    main()
