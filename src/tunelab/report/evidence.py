"""What each finding rests on: the training runs behind a factor's levels, which noise its interval covers, and the seed
replicates (how many, at what cost) that would settle an effect measured on one run per configuration. Without
replicates an interval covers test-sample noise only, not training noise, so such an effect is an observation;
replicates are priced from measured wall times, else the plan's estimates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.fsutil import human_seconds
from tunelab.report.comparisons import replicated
from tunelab.report.data import ReportData, RunData
from tunelab.report.effects import FactorEffect
from tunelab.rundir.experiment import SPEC_FILE

REPLICATE_SEEDS = 3  # seeds per configuration proposed when a sweep has none


def level_runs(eff: FactorEffect) -> str:
    """'1 run per level' or, when levels differ, '4: 2 runs; 16: 1 run'."""
    def runs(n: int) -> str:
        return f"{n} run{'s' if n != 1 else ''}"

    counts = {s.n for s in eff.levels}
    if len(counts) == 1:
        return f"{runs(counts.pop())} per level"
    return "; ".join(f"{s.level}: {runs(s.n)}" for s in eff.levels)


def evidence_note(eff: FactorEffect) -> str:
    """Which noise the effect's interval covers, and what the levels rest on."""
    if eff.replicated:
        if eff.diff is None or not eff.diff.known:
            return f"{level_runs(eff)} across seed replicates"
        return (f"{level_runs(eff)} across seed replicates: the interval includes training (seed-to-seed) noise "
                "as well as test-sample noise")
    why = "no per-sample scores" if eff.metric == "score" else "one val loss per run"
    what = "the interval covers test-sample noise only, not training noise" if eff.diff is not None and \
        eff.diff.known else f"no interval ({why}), and training noise unmeasured"
    return f"an observation: {level_runs(eff)}, no seed replicates — {what}"


@dataclass
class ReplicationPlan:
    """Seed replicates that would put training noise into the unreplicated effects, and their cost."""

    factors: list[str]  # factors whose effects rest on one training run per configuration
    seeds: int
    configurations: int  # the sweep's fine-tuned runs: one per configuration
    seconds: float  # seeds × the known per-run times
    measured: int  # runs whose time is measured (summary.json duration_s)
    planned: int  # runs whose time is the plan's estimate (run.yaml estimate.seconds)
    unknown: int  # runs with neither

    @property
    def runs(self) -> int:
        return self.seeds * self.configurations


def run_seconds(run: RunData) -> tuple[float | None, str | None]:
    """A run's wall time: measured when it completed, else the plan's estimate; with its source."""
    measured = run.summary.duration_s
    if isinstance(measured, (int, float)) and measured > 0:
        return float(measured), "measured"
    planned = run.config.estimate.seconds if run.config.estimate else None
    if isinstance(planned, (int, float)) and planned > 0:
        return float(planned), "planned"
    return None, None


def replication_plan(data: ReportData, effects: list[FactorEffect], seeds: int = REPLICATE_SEEDS
                     ) -> ReplicationPlan | None:
    """None when no effect is stated or seeds are swept already (a short level needs retries, not new seeds)."""
    factors = list(dict.fromkeys(e.factor for e in effects if e.spread is not None and not e.replicated))
    if not factors or not data.runs or replicated(data):  # seeds swept: a level short of replicates is no plan
        return None
    times = [run_seconds(r) for r in data.runs]
    sources = [src for _, src in times]
    return ReplicationPlan(factors, seeds, len(data.runs), seeds * sum(t for t, _ in times if t is not None),
                           sources.count("measured"), sources.count("planned"), sources.count(None))


def replication_step(plan: ReplicationPlan, data_dir: Path) -> str:
    """The next step that settles the unreplicated effects: which seeds, how many runs, how long."""
    seeds = ", ".join(str(i) for i in range(1, plan.seeds + 1))
    known = plan.configurations - plan.unknown
    sources = "; ".join([f"{plan.measured} measured, summary.json `duration_s`"] * bool(plan.measured)
                        + [f"{plan.planned} the plan's estimate, run.yaml `estimate.seconds`"] * bool(plan.planned))
    if known:
        per_seed = human_seconds(plan.seconds / plan.seeds)
        cost = (f"≈ {human_seconds(plan.seconds)} of training: {plan.seeds} × {per_seed}, the summed wall time of "
                f"the {known} run(s) ({sources})")
        if plan.unknown:
            cost += f", plus {plan.unknown} run(s) with no measured or estimated time"
    else:
        cost = "time unknown (no run has a measured or estimated time)"
    return (f"Replicate before choosing {', '.join(plan.factors)}: the effects rest on one training run per "
            f"configuration, so training noise is not in their intervals. Add `seed: [{seeds}]` to `factors` "
            f"({plan.seeds} seeds per configuration): {plan.seeds} × {plan.configurations} = {plan.runs} runs, "
            f"{cost}. Runs are named by their seed, so put the seeds in a copy of `{data_dir / SPEC_FILE}` and "
            f"scaffold it into a new directory (`tunelab scaffold COPY --out {data_dir}-seeds`).")


def jump_noise(replicated: bool, diff: Any) -> str:
    """Which noise a score jump was set against."""
    if diff is None or not diff.known:
        return "no interval (no per-sample scores)"
    if replicated:
        return f"{diff.method}: training and test-sample noise"
    return f"{diff.method}, one training run per level: test-sample noise only, training noise not measured"
