"""Findings that know their evidence, on hand-made run directories (test_report's builders): a factor's effect
measured on one training run per configuration is an observation that names its runs per level and the noise
its interval leaves out, and next steps price the seed replicates that would settle it; with seed replicates
the effect is stated with training noise included. "Still improving" and score jumps are findings only
beyond the noise they name."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import test_report
import yaml
from scipy import stats
from test_report import STEPS_PER_EPOCH, _control, _pts, fake_run

from tunelab.fsutil import human_seconds
from tunelab.report.build import build_report
from tunelab.report.data import gather
from tunelab.report.findings import analyze, still_falling
from tunelab.scaffold.write import scaffold

exp, _own_history = test_report.exp, test_report._own_history  # its fixtures: a lora_rank [4, 16] sweep, own history


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _set_estimate(run_dir, seconds):
    """run.yaml `estimate.seconds` as scaffold writes the plan's estimate."""
    cfg = yaml.safe_load((run_dir / "run.yaml").read_text())
    cfg["estimate"] = {**(cfg.get("estimate") or {}), "seconds": seconds}
    (run_dir / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


# ---------------------------------------------------------------- (a) one training run per configuration
def test_unreplicated_effect_is_an_observation_and_next_steps_price_the_replicates(exp):
    fake_run(exp, "tiny_r4", score=0.30, summary={"duration_s": 240.0})
    r16 = fake_run(exp, "tiny_r16", score=0.80, summary={"duration_s": None})  # no measured time: the plan's
    _set_estimate(r16, 420.0)
    _control(exp)
    f = analyze(gather(exp))
    eff = next(e for e in f.effects if e.metric == "score")
    assert not eff.replicated and [s.n for s in eff.levels] == [1, 1] and eff.diff.resolved

    # the cost, read back from the files it comes from: the measured time of r4, the plan's estimate for r16
    measured = json.loads((exp / "runs" / "tiny_r4" / "summary.json").read_text())["duration_s"]
    planned = yaml.safe_load((r16 / "run.yaml").read_text())["estimate"]["seconds"]
    rep = f.replication
    assert rep.factors == ["lora_rank"] and (rep.seeds, rep.configurations, rep.runs) == (3, 2, 6)
    assert rep.seconds == pytest.approx(3 * (measured + planned)) and (rep.measured, rep.planned) == (1, 1)
    step = next(s for s in f.next_steps if s.startswith("Replicate before choosing lora_rank"))
    assert "Add `seed: [1, 2, 3]` to `factors`" in step and "3 × 2 = 6 runs" in step
    assert f"≈ {human_seconds(3 * (measured + planned))} of training: 3 × {human_seconds(measured + planned)}" in step
    assert "1 measured, summary.json `duration_s`; 1 the plan's estimate, run.yaml `estimate.seconds`" in step

    md = build_report(exp).markdown.read_text()
    glance, key = _section(md, "At a glance"), _section(md, "Key findings")
    assert "lora_rank: 16 − 4" not in glance and "score_by_lora_rank" not in glance  # not headlined
    assert "Effects of lora_rank: observations only — one training run per configuration, no seed replicates" \
        in glance
    assert key.index("**Best run:**") < key.index("**Observations per swept factor**")  # after the findings
    assert "each interval covers test-sample noise only, not training noise" in key
    line = next(x for x in key.splitlines() if x.startswith("- **lora_rank** on exact_match"))
    assert "Highest at 16: 16 − 4 = +50.0 pp [" in line and "Best level" not in line
    assert "an observation: 1 run per level, no seed replicates — the interval covers test-sample noise only, " \
           "not training noise" in line
    assert step in _section(md, "Next steps")


def test_runs_per_level_are_counted_over_the_other_factors(write_spec):
    """Two models: each rank rests on two runs (one a model), still no seed replicates."""
    spec = yaml.safe_load(write_spec().read_text())
    spec = write_spec(models=spec["models"] + [{"name": "tiny2", "path": spec["models"][0]["path"]}],
                      factors={"lora_rank": [4, 16]}, training={"epochs": 3})
    plan = scaffold(spec)
    exp = spec.parent
    for cfg, score in zip(plan.finetune_runs, (0.3, 0.8, 0.35, 0.75)):
        fake_run(exp, cfg.name, score=score)
    f = analyze(gather(exp))
    eff = next(e for e in f.effects if e.factor == "lora_rank" and e.metric == "score")
    assert [s.n for s in eff.levels] == [2, 2] and not eff.replicated
    assert f.replication.runs == 3 * len(plan.finetune_runs)
    md = build_report(exp).markdown.read_text()
    assert "an observation: 2 runs per level, no seed replicates" in _section(md, "Key findings")


# ---------------------------------------------------------------- (b) seed replicates
def _seeded(write_spec, scores):
    spec = write_spec(factors={"lora_rank": [4, 16], "seed": [1, 2]}, training={"epochs": 3})
    plan = scaffold(spec)
    for cfg in plan.finetune_runs:
        fake_run(spec.parent, cfg.name, score=scores[(cfg.factors["lora_rank"], cfg.factors["seed"])])
    return spec.parent


def test_replicated_effect_is_stated_with_training_noise_included(write_spec):
    scores = {(4, 1): 0.500, (4, 2): 0.525, (16, 1): 0.800, (16, 2): 0.825}
    exp = _seeded(write_spec, scores)
    f = analyze(gather(exp))
    eff = next(e for e in f.effects if e.metric == "score")
    welch = stats.ttest_ind([0.800, 0.825], [0.500, 0.525], equal_var=False)
    ci = welch.confidence_interval()
    assert eff.replicated and (eff.diff.low, eff.diff.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert f.replication is None and not any(s.startswith("Replicate before") for s in f.next_steps)
    md = build_report(exp).markdown.read_text()
    shown = f"+30.0 pp [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]"
    assert (f"lora_rank: 16 − 4 on mean accuracy: **{shown}, Welch p = {welch.pvalue:.2g}** (across seed "
            "replicates: training noise included)." in _section(md, "At a glance"))
    key = _section(md, "Key findings")
    assert key.lstrip().startswith("**Effect of each swept factor**") and "intervals across seed replicates include " \
                                                                  "training noise" in key
    line = next(x for x in key.splitlines() if x.startswith("- **lora_rank** on exact_match"))
    assert f"Best level **16**: 16 − 4 = {shown}, Welch p = {welch.pvalue:.2g}" in line
    val_loss = next(x for x in key.splitlines() if x.startswith("- **lora_rank** on final val loss"))
    assert "2 runs per level across seed replicates" in val_loss and "no seed replicates" not in val_loss
    assert "2 runs per level across seed replicates: the interval includes training (seed-to-seed) noise" in line


# ---------------------------------------------------------------- (c) still improving and score jumps
def _expected_fall(steps, values):
    """Least-squares fall over the window and its 95 % half-width, from the closed-form slope and its SE."""
    x, y = np.asarray(steps, float), np.asarray(values, float)
    sxx = ((x - x.mean()) ** 2).sum()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    resid = y - (y.mean() + slope * (x - x.mean()))
    se = math.sqrt((resid ** 2).sum() / (len(x) - 2) / sxx)
    span = x[-1] - x[0]
    return -slope * span, stats.t.ppf(0.975, len(x) - 2) * se * span


EARLY = [2.0, 1.8, 1.6, 1.45, 1.3, 1.2, 1.15, 1.1, 1.05, 1.0]  # validations every 2 steps, epochs 1-2
WOBBLE = [0.95, 1.03, 0.94, 1.02, 0.985]  # epoch 3: 1.5 % lower at its end, but up and down on the way
TREND = [0.981, 0.959, 0.941, 0.919, 0.90]  # epoch 3: steadily down


@pytest.mark.parametrize("last, beyond", [(WOBBLE, False), (TREND, True)])
def test_still_falling_sets_the_fall_against_the_scatter_of_the_last_epoch(last, beyond):
    val = _pts(EARLY + last, every=2)
    s = still_falling(val)
    window = [p for p in val if p.step >= 2 * STEPS_PER_EPOCH]
    fall, margin = _expected_fall([p.step for p in window], [p.value for p in window])
    assert s is not None and s.points == len(window) == 6 and s.drop >= 0.01
    assert (s.fitted_fall, s.margin) == (pytest.approx(fall), pytest.approx(margin))
    assert s.beyond_noise is beyond is bool(fall > margin)


def test_still_improving_is_a_finding_only_beyond_its_noise(exp):
    fake_run(exp, "tiny_r4", val=EARLY + WOBBLE, score=0.5)
    fake_run(exp, "tiny_r16", val=EARLY + TREND, score=0.5)
    f = analyze(gather(exp))
    assert {n: s.beyond_noise for n, s in f.still_falling.items()} == {"tiny_r4": False, "tiny_r16": True}
    assert any(s.startswith("Train longer (e.g. 6 instead of 3): validation loss was still falling at the last "
                            "epoch, beyond its checkpoint-to-checkpoint noise, in tiny_r16.") for s in f.next_steps)
    # tiny_r4's fall lies within its measured noise: a plateau, so neither longer training nor more validations
    assert not any("tiny_r4" in s for s in f.next_steps if s.startswith(("Train longer", "Validate")))
    key = _section(build_report(exp).markdown.read_text(), "Key findings")
    r16 = next(x for x in key.splitlines() if "— tiny_r16:**" in x)
    r4 = next(x for x in key.splitlines() if "— tiny_r4:**" in x)
    assert r16.startswith("- **Still improving — tiny_r16:**") and "beyond checkpoint-to-checkpoint noise" in r16
    assert r4.startswith("- **Val loss lower at the end (observation) — tiny_r4:**")
    assert "within checkpoint-to-checkpoint noise" in r4
    fall, margin = _expected_fall(range(20, 31, 2), [1.0] + WOBBLE)
    assert f"{fall:.3g} ± {margin:.2g}" in r4


@pytest.mark.parametrize("scores, finding", [
    ({(4, 1): 0.40, (4, 2): 0.60, (16, 1): 0.55, (16, 2): 0.75}, False),  # 15 pp, within seed-to-seed noise
    ({(4, 1): 0.500, (4, 2): 0.525, (16, 1): 0.800, (16, 2): 0.825}, True),  # 30 pp, far outside it
])
def test_score_jump_is_a_finding_only_beyond_seed_to_seed_noise(write_spec, scores, finding):
    exp = _seeded(write_spec, scores)
    f = analyze(gather(exp))
    (j,) = f.jumps
    welch = stats.ttest_ind([scores[(16, s)] for s in (1, 2)], [scores[(4, s)] for s in (1, 2)], equal_var=False)
    ci = welch.confidence_interval()
    assert (j.diff.low, j.diff.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert j.finding is finding is bool(ci.low > 0)
    key = _section(build_report(exp).markdown.read_text(), "Key findings")
    line = next(x for x in key.splitlines() if "Score jump" in x)
    title = "Score jump" if finding else "Score jump (observation)"
    assert line.startswith(f"- **{title} — lora_rank 4 → 16 on tiny:**")
    assert "Welch t across 2 + 2 replicate runs: training and test-sample noise" in line
    assert any("intermediate lora_rank values 8" in s for s in f.next_steps) is finding


def test_unreplicated_score_jump_is_an_observation_naming_test_sample_noise(exp):
    fake_run(exp, "tiny_r4", score=0.30)
    fake_run(exp, "tiny_r16", score=0.80)
    f = analyze(gather(exp))
    (j,) = f.jumps
    assert j.diff.resolved and not j.finding  # beyond test-sample noise, but training noise unmeasured
    key = _section(build_report(exp).markdown.read_text(), "Key findings")
    line = next(x for x in key.splitlines() if "Score jump" in x)
    assert line.startswith("- **Score jump (observation) — lora_rank 4 → 16 on tiny:**")
    assert "one training run per level: test-sample noise only, training noise not measured" in line
    step = next(s for s in f.next_steps if "intermediate lora_rank values 8" in s)
    assert step.endswith("(one training run per level: an observation until replicated).")
