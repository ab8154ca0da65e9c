"""The report's Tuning section on hand-made run directories read through the ledger as the report reads them: the
factor comparison at the tuned rates beside the same comparison on the default-lr twins, in one sentence (holds,
changes, or cannot be told because a twin diverged), and each combination's trials as a figure and a table; where
no search chose a combination's rate, each line says so and no comparison is called tuned (issue 55)."""

from __future__ import annotations

import re

import pytest
from test_report import fake_run

from tunelab.fsutil import atomic_write_json
from tunelab.report.build import build_report
from tunelab.report.data import gather
from tunelab.report.tuning import rate_comparisons
from tunelab.rundir.config import load_run_config, save_run_config
from tunelab.rundir.tuned import Pruned, TunedRate, trial_dir, write_best, write_pruned
from tunelab.scaffold.write import scaffold

TUNE = {"learning_rate": {"low": 1e-4, "high": 1e-2}, "per": ["lora_rank"], "trials": 3, "budget": 0.25}
RATES = {4: 2e-4, 16: 3e-4}


@pytest.fixture(autouse=True)
def _own_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


@pytest.fixture
def exp(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 16]}, training={"epochs": 3}, controls=False, tune=TUNE)
    write_best(spec.parent, {f"lora_rank-{r}": TunedRate(combination=f"lora_rank-{r}", learning_rate=lr,
                                                         objective="val_loss", value=0.5, trial=1, trials=3)
                             for r, lr in RATES.items()})
    scaffold(spec)
    return spec.parent


def _sweep(exp, tuned: dict[int, float], default: dict[int, float | None]) -> None:
    """Tuned runs and twins with these accuracies (None: the twin diverged: a NaN loss and a failed run)."""
    for rank, score in tuned.items():
        fake_run(exp, f"tiny_r{rank}", score=score, val=(1.5, 1.0, 1.0 - score))
    for rank, twin_score in default.items():
        name = f"tiny_r{rank}_lr-default"
        if twin_score is None:
            fake_run(exp, name, state="failed", nan_at=2, error="loss is NaN")
        else:
            fake_run(exp, name, score=twin_score, val=(1.5, 1.0, 1.0 - twin_score))


def _sentences(exp) -> dict[str, str]:
    return {c.tuned.metric: c.sentence for c in rate_comparisons(gather(exp))}


def test_a_ranking_that_holds_at_both_rates_says_so(exp):
    _sweep(exp, {4: 0.30, 16: 0.80}, {4: 0.20, 16: 0.60})
    said = _sentences(exp)
    assert said["score"] == ("exact_match accuracy: lora_rank 16 > lora_rank 4 at the tuned rates (0.0003, 0.0002) "
                             "and at the default 0.002: the finding holds at both.")
    assert said["final_val_loss"] == ("final validation loss: lora_rank 16 > lora_rank 4 at the tuned rates "
                                      "(0.0003, 0.0002) and at the default 0.002: the finding holds at both.")


def test_a_ranking_that_flips_at_the_default_rate_is_not_a_finding(exp):
    _sweep(exp, {4: 0.30, 16: 0.80}, {4: 0.60, 16: 0.20})
    assert _sentences(exp)["score"] == (
        "exact_match accuracy: lora_rank 16 > lora_rank 4 at the tuned rates (0.0003, 0.0002), but lora_rank 4 > "
        "lora_rank 16 at the default 0.002: the ranking changes with the learning rate, so a comparison at the one "
        "default rate is not a finding.")


def test_a_diverged_twin_is_named_and_its_comparison_is_not_a_finding(exp):
    _sweep(exp, {4: 0.30, 16: 0.80}, {4: 0.20, 16: None})
    assert _sentences(exp)["score"] == (
        "exact_match accuracy: lora_rank 16 > lora_rank 4 at the tuned rates (0.0003, 0.0002); at the default 0.002 "
        "lora_rank 16 diverged: the default-lr comparison is not a finding.")


def test_the_twins_stay_out_of_the_findings(exp):
    _sweep(exp, {4: 0.30, 16: 0.80}, {4: 0.90, 16: 0.95})
    data = gather(exp)
    assert [r.name for r in data.runs] == ["tiny_r4", "tiny_r16"]
    assert [r.name for r in data.twins] == ["tiny_r4_lr-default", "tiny_r16_lr-default"]


def _trials(exp) -> None:
    """Three trials of lora_rank-4 (trial 1 chosen, trial 2 pruned at step 3) as the search leaves them."""
    base = load_run_config(exp / "runs" / "tiny_r4")
    for n, (lr, vals) in enumerate([(1e-3, (1.4, 1.1)), (2e-4, (1.2, 0.5)), (5e-3, (2.5, 2.9))]):
        run_dir = trial_dir(exp, "lora_rank-4", n)
        training = base.training.model_copy(update={"learning_rate": lr})  # type: ignore[union-attr]
        save_run_config(base.model_copy(update={"name": f"lora_rank-4-trial-{n}", "training": training,
                                                "directory": str(run_dir)}))
        (run_dir / "metrics.jsonl").write_text("".join(
            f'{{"step": {3 * (i + 1)}, "val_loss": {v}}}\n' for i, v in enumerate(vals)))
        atomic_write_json(run_dir / "status.json", {"run": run_dir.name, "state": "completed", "attempt": 1})
    write_pruned(trial_dir(exp, "lora_rank-4", 2), Pruned(step=3, value=2.5, at="2026-01-02T10:00:00+00:00"))


def test_the_section_draws_each_combinations_trials_and_writes_the_sentence(exp):
    _sweep(exp, {4: 0.30, 16: 0.80}, {4: 0.20, 16: 0.60})
    _trials(exp)
    files = build_report(exp)
    md = files.markdown.read_text()
    assert "## Tuning" in md
    assert "the finding holds at both." in md
    assert (exp / "report" / "figures" / "tuning_lora_rank-4.png").is_file()
    assert "figures/tuning_lora_rank-4.png" in md
    assert "| lora_rank-4 | 1 | 0.0002 | completed | 0.5 | 6 | chosen |" in md
    assert "| lora_rank-4 | 2 | 0.005 | pruned | 2.5 | 3 |  |" in md
    assert "| lora_rank | exact_match accuracy | 16 | 0.8 | 0.6 |" in md
    assert "Tuning" in files.html.read_text()


@pytest.fixture
def unsearched(write_spec):
    """The issue's sweep: a tune: block, scaffolded and trained with no search run (every run at the default)."""
    spec = write_spec(factors={"lora_rank": [4, 16]}, training={"epochs": 3}, controls=False, tune=TUNE)
    scaffold(spec)
    return spec.parent


def tuning_text(exp) -> str:
    md = build_report(exp).markdown.read_text()
    section = md[md.index("## Tuning"):]
    return section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section


def claims_tuned(text: str) -> list[str]:
    """Each 'tuned' the text says that no negation ('not', 'no', 'untuned') precedes: a claim of a tuned rate."""
    return [text[max(0, m.start() - 40):m.end() + 20] for m in re.finditer(r"\btuned\b", text, re.IGNORECASE)
            if not re.search(r"\b(not|no)\b[^.:;]*$", text[max(0, m.start() - 40):m.start()])]


def test_without_a_search_the_rates_are_said_not_searched_and_nothing_is_called_tuned(unsearched):
    _sweep(unsearched, {4: 0.30, 16: 0.30}, {4: 0.30, 16: 0.30})
    assert _sentences(unsearched)["score"] == (
        "exact_match accuracy: lora_rank 4 = lora_rank 16 at the rates used (0.002), not at tuned rates: no "
        "learning-rate search chose the rate of lora_rank 4, lora_rank 16, so whether the finding holds across "
        "learning rates is not known.")
    text = tuning_text(unsearched)
    assert "- `lora_rank-4` (tiny_r4): not searched: the spec's default rate 0.002" in text
    assert "- `lora_rank-16` (tiny_r16): not searched: the spec's default rate 0.002" in text
    assert "holds at both" not in text and "Runs' rates (mean)" in text
    assert claims_tuned(text) == []


def test_a_searched_combination_says_its_trials_and_best_and_the_finding_may_hold_at_both(exp):
    _sweep(exp, {4: 0.30, 16: 0.80}, {4: 0.20, 16: 0.60})
    text = tuning_text(exp)
    assert "- `lora_rank-4` (tiny_r4): searched: 3 trials, best val loss 0.5 at rate 0.0002" in text
    assert "- `lora_rank-16` (tiny_r16): searched: 3 trials, best val loss 0.5 at rate 0.0003" in text
    assert "at the tuned rates (0.0003, 0.0002) and at the default 0.002: the finding holds at both." in text
    assert "not searched" not in text


def test_a_search_run_after_the_runs_trained_is_not_their_rate(unsearched):
    """best.json written after the runs were scaffolded and trained at the default: the search is named, the
    runs' rate is not called tuned."""
    write_best(unsearched, {"lora_rank-4": TunedRate(combination="lora_rank-4", learning_rate=2e-4,
                                                     objective="val_loss", value=0.5, trial=1, trials=3)})
    _trials(unsearched)
    _sweep(unsearched, {4: 0.30, 16: 0.80}, {4: 0.20, 16: 0.60})
    assert _sentences(unsearched)["score"].endswith(
        "no learning-rate search chose the rate of lora_rank 4, lora_rank 16, so whether the finding holds across "
        "learning rates is not known.")
    text = tuning_text(unsearched)
    assert ("- `lora_rank-4` (tiny_r4): searched: 3 trials, best val loss 0.5 at rate 0.0002, but its runs trained at "
            "0.002, not at it (scaffolded before the search chose it): not tuned") in text
    assert "- `lora_rank-16` (tiny_r16): not searched: the spec's default rate 0.002" in text
    assert claims_tuned(text) == []


def test_a_combination_whose_search_record_is_gone_is_not_called_searched_or_the_specs_default(exp):
    """The audit's tune case (docs/report.md): the searched sweep says "holds at both"; with lora_rank-16's record
    gone from tune/best.json (its runs' run.yaml still naming the search), its line says the claim is unconfirmed —
    before, it read "not searched: the spec's default rate 0.0003", a rate the spec never had — and the comparison is
    no longer called tuned."""
    _sweep(exp, {4: 0.30, 16: 0.80}, {4: 0.20, 16: 0.60})
    assert "the finding holds at both." in tuning_text(exp)
    write_best(exp, {"lora_rank-4": TunedRate(combination="lora_rank-4", learning_rate=RATES[4],
                                              objective="val_loss", value=0.5, trial=1, trials=3)})
    text = tuning_text(exp)
    assert "- `lora_rank-4` (tiny_r4): searched: 3 trials, best val loss 0.5 at rate 0.0002" in text
    assert ("- `lora_rank-16` (tiny_r16): not confirmed as tuned: run.yaml names a search (tuned: best of 3 trials, "
            "val loss 0.5 at 0.0003, trial 1), but tune/best.json holds no record of lora_rank-16: rate 0.0003") in text
    assert "the spec's default rate 0.0003" not in text and "holds at both" not in text
    assert _sentences(exp)["score"].endswith("no learning-rate search chose the rate of lora_rank 16, so whether the "
                                             "finding holds across learning rates is not known.")
