"""The report's Key findings section, each finding with its evidence: a factor's effect is stated when it rests on seed
replicates, else listed after the others as an observation."""

from __future__ import annotations

from statistics import mean

from tunelab.report.comparisons import replicated
from tunelab.report.data import ReportData, RunData
from tunelab.report.document import Bullets, Para, Section
from tunelab.report.evaluation import best_text, diff_text, effect_text, show_ci
from tunelab.report.evidence import jump_noise
from tunelab.report.findings import (
    MEMORY_MOSTLY_UNUSED,
    OVERFIT_MIN_RISE,
    STILL_FALLING_MIN_DROP,
    Findings,
    ScoreJump,
    StillFalling,
)
from tunelab.rundir.memory import MemoryKind


def _control_item(data: ReportData, f: Findings, metric: str | None) -> str:
    """Fine-tuned vs control: the mean difference and each run's, all paired on the same test samples."""
    ds = {n: d for n, d in f.control_vs.items() if d is not None}
    alone = [r.name for r in data.runs if r.score is not None and r.name not in f.control_vs]
    without = f" No evaluated base-model control for {', '.join(alone)}: not compared." if alone else ""
    if not ds:
        return "**Fine-tuned vs control:** " + (without.strip() if alone else "no per-sample scores to compare.")
    better = [n for n, d in ds.items() if d.resolved and d.estimate > 0]
    worse = [n for n, d in ds.items() if d.resolved and d.estimate < 0]
    same = [n for n, d in ds.items() if d.known and not d.resolved]
    mean_d = diff_text(f.control_mean, metric, mean(d.estimate for d in ds.values()))
    return (f"**Fine-tuned vs control** ({data.eval_task}, {metric}, paired on the same test samples): mean "
            f"{mean_d} over {len(ds)} run(s); {len(better)} above their control, {len(worse)} below, {len(same)} "
            "with no detectable difference (interval includes zero): "
            + "; ".join(f"{n} {diff_text(d, metric)}" for n, d in ds.items()) + "." + without)


def _effect_blocks(data: ReportData, f: Findings) -> list:
    """Each factor's effect: stated when measured across seed replicates, else listed as an observation."""
    items = [effect_text(eff) for eff in f.effects]
    if f.replication is None:
        head = ("**Effect of each swept factor** (mean over completed runs at each level; other factors averaged "
                "over" + ("; intervals across seed replicates include training noise):" if replicated(data) else "):"))
    else:
        head = ("**Observations per swept factor** (mean over completed runs at each level; other factors averaged "
                "over). One training run per configuration and no seed replicates: each interval covers test-sample "
                "noise only, not training noise, so none of these is established as an effect (Next steps: the "
                "replicates that would settle them).")
    return [Para(head), Bullets(items or ["No factor with two or more measured levels yet."])]


def key_findings(data: ReportData, f: Findings) -> Section:
    blocks: list = [] if f.replication is not None else _effect_blocks(data, f)
    items = []
    metric = data.headline.primary_metric if data.headline else None
    if f.best:
        items.append(best_text(data, f))
    controls_planned = bool(data.controls) or any(a.kind == "control" for a in data.absent)
    if f.control_vs or (controls_planned and any(r.score is not None for r in data.runs)):
        items.append(_control_item(data, f, metric))
    if f.overfit:
        for name, o in f.overfit.items():
            items.append(f"**Overfitting — {name}:** val loss rose from its best {o.best_val:.4g} (step "
                         f"{o.best_step}) to {o.final_val:.4g} (step {o.final_step}, +{100 * o.rise:.1f} %) while "
                         f"train loss fell {o.train_from:.4g} → {o.train_to:.4g}.")
    else:
        items.append(overfit_none(data))
    if f.still_falling:
        items += [falling_text(name, s) for name, s in f.still_falling.items()]
    elif data.completed:
        items.append(falling_none(data))
    items += [jump_text(j, metric) for j in f.jumps]
    judged = [(m, m.fraction) for m in f.memory if m.fraction is not None]
    if judged:
        for m, fraction in judged:
            items.append(f"**GPU memory — {m.run}:** peak {m.peak_gib:.2f} of {m.total_gib:.1f} GiB "
                         f"({fraction:.0%}) on {m.device}" + (" — mostly unused." if fraction <
                                                               MEMORY_MOSTLY_UNUSED else "."))
    elif f.memory:
        kinds = {m.kind for m in f.memory}
        if kinds == {MemoryKind.CUDA_MAX_ALLOCATED}:
            items.append("**GPU memory:** the GPU's total memory is not recorded in `summary.json`, so unused "
                         "memory cannot be judged.")
        else:
            items.append("**GPU memory:** cannot be judged — these runs trained on CPU (peak memory is the "
                         f"process's max RSS, {MemoryKind.HOST_MAX_RSS.label}).")
    blocks.append(Bullets(items))
    if f.replication is not None:
        blocks += _effect_blocks(data, f)
    return Section("Key findings", blocks)


def _unjudged(runs: list[RunData], judged: list[RunData]) -> str:
    """'; not judged: X, Y (fewer than two …)' for the runs a rule could not be applied to."""
    rest = [r.name for r in runs if r not in judged]
    return (f"; not judged: {', '.join(rest)} (fewer than two validation losses in `metrics.jsonl`)" if rest else "")


def overfit_none(data: ReportData) -> str:
    """No run overfit: over how many runs the rule could look, never "none detected" where it looked at none."""
    judged = [r for r in data.runs if len(r.val_loss) >= 2 and len(r.train_loss) >= 2]
    if not judged:
        return ("**Overfitting:** not judged — no fine-tuned run has two validation losses and two training losses "
                "in `metrics.jsonl` to compare.")
    return (f"**Overfitting:** none detected in {len(judged)} of {len(data.runs)} fine-tuned run(s) (rule: val loss "
            f"ends ≥ {OVERFIT_MIN_RISE:.0%} above a best reached before the last third of training while train loss "
            f"falls){_unjudged(data.runs, judged)}.")


def falling_none(data: ReportData) -> str:
    """No completed run's val loss still falling: over how many it could be judged."""
    judged = [r for r in data.completed if len(r.val_loss) >= 2]
    if not judged:
        return ("**Still improving:** not judged — no completed run has two validation losses in `metrics.jsonl`.")
    return (f"**Still improving:** no val loss fell ≥ {STILL_FALLING_MIN_DROP:.0%} over its last epoch in "
            f"{len(judged)} of {len(data.completed)} completed run(s){_unjudged(data.completed, judged)}.")


def falling_text(name: str, s: StillFalling) -> str:
    """Still improving, set against the scatter of the last epoch's validations (or an observation)."""
    fell = (f"val loss {s.prev_val:.4g} → {s.final_val:.4g} (−{100 * s.drop:.1f} %) over the last epoch "
            f"(steps {s.prev_step}–{s.final_step})")
    seen = f"**Val loss lower at the end (observation) — {name}:** {fell}"
    if s.fitted_fall is None or s.margin is None:
        return (f"{seen}; only {s.points} validations span that epoch, too few to measure their checkpoint-to-"
                "checkpoint noise: not yet evidence that training longer helps.")
    fit = (f"the fall along a line fitted to its {s.points} validations is {s.fitted_fall:.3g} ± {s.margin:.2g} "
           "(95 %, from their scatter about the line)")
    if s.beyond_noise:
        return f"**Still improving — {name}:** {fell}; {fit}: beyond checkpoint-to-checkpoint noise."
    return f"{seen}; {fit}: within checkpoint-to-checkpoint noise, so not evidence that training longer helps."


def jump_text(j: ScoreJump, metric: str | None) -> str:
    """A score jump between adjacent levels, with the noise it was set against."""
    what = "Score jump" if j.finding else "Score jump (observation)"
    return (f"**{what} — {j.factor} {j.low} → {j.high} on {j.model}:** {show_ci(j.score_low, None, metric)} → "
            f"{show_ci(j.score_high, None, metric)}, {diff_text(j.diff, metric, j.delta)}; against "
            f"{jump_noise(j.replicated, j.diff)}.")
