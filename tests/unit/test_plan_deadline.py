"""The deadline: a typed duration in the spec (file + field errors) and on the command line, the verdict on a
sweep placed on its devices (fits at P90, fits at P50 only, does not fit with what would have to give, unknown),
and `plan --deadline --json` end to end through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.execute.schedule import Device
from tunelab.forecast.deadline import DeadlineVerdict, RunTimeline, judge
from tunelab.spec import load_spec
from tunelab.spec.resources import parse_duration

runner = CliRunner()


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


@pytest.mark.parametrize("text, seconds", [("6h", 21600), ("90m", 5400), ("90min", 5400), ("1d", 86400),
                                           ("1h30m", 5400), ("45s", 45), ("1.5h", 5400), (" 2 h ", 7200)])
def test_a_deadline_is_a_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["6 hours", "6", "h", "", "0h", "-1h", "6h later"])
def test_a_bad_duration_is_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_bad_deadline_in_the_spec_names_the_file_and_the_field(write_spec):
    path = write_spec(resources={"deadline": "6 hours"})
    with pytest.raises(TunelabError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and "resources.deadline" in str(err.value) and "'6h'" in str(err.value)
    with pytest.raises(TunelabError, match="training.levers"):
        load_spec(write_spec(training={"levers": "sometimes"}))


def _line(name: str, total: float | None, kind: str = "finetune", train: float = 0.0, evaluation: float = 0.0,
          spread: float = 0.0) -> RunTimeline:
    """A run whose parts sum to `total`; its P10–P90 is total × (1 ∓ spread)."""
    return RunTimeline(run=name, kind=kind, train_s=train, eval_s=evaluation, eval_start_s=0.0, total_s=total,
                       total_p10_s=None if total is None else total * (1 - spread),
                       total_p90_s=None if total is None else total * (1 + spread),
                       train_source="test", eval_source="test")


def test_a_sweep_that_fits_at_p90_and_one_that_fits_only_at_p50():
    lines = [_line("a", 100.0, train=100.0, spread=0.2), _line("b", 60.0, train=60.0, spread=0.2),
             _line("c", 40.0, train=40.0, spread=0.2)]
    devices = [Device("0"), Device("1")]
    d = judge("4m", 240.0, lines, devices, "two GPUs")
    # longest first on two devices: a on 0 (0-100), b on 1 (0-60), c on 1 (60-100): makespan 100; at P90 every
    # run 1.2x: 120, at P10 0.8x: 80; slack is the deadline less the P90
    assert d.makespan_s == 100.0 and d.verdict == DeadlineVerdict.FITS and d.slack_s == 120.0
    assert (d.makespan_p10_s, d.makespan_p90_s) == (pytest.approx(80.0), pytest.approx(120.0))
    assert {r.run: (r.devices, r.start_s) for r in d.runs} == {"a": (["0"], 0.0), "b": (["1"], 0.0),
                                                                "c": (["1"], 60.0)}
    tight = judge("x", 110.0, lines, devices, "two GPUs")  # 100 at P50 fits, 120 at P90 does not
    assert tight.verdict == DeadlineVerdict.FITS_P50 and tight.slack_s == pytest.approx(-10.0)
    # what would have to give aims at the P90: dropping a (120 at P90) leaves b + c = 100 x 1.2 = 120 on one... no:
    # b and c on two devices: 72 at P90 <= 110
    gives = {g.what: g for g in tight.gives}
    assert gives["runs"].change.endswith(": a") and gives["runs"].makespan_s == pytest.approx(72.0)
    assert judge("x", 99.0, lines, devices, "two GPUs").verdict == DeadlineVerdict.DOES_NOT_FIT


def test_a_sweep_that_does_not_fit_says_what_would_have_to_give():
    lines = [_line("a", 300.0, train=200.0, evaluation=100.0), _line("b", 200.0, train=150.0, evaluation=50.0),
             _line("c", 100.0, train=50.0, evaluation=50.0), _line("base", 50.0, kind="control", evaluation=50.0)]
    d = judge("5m", 300.0, lines, [Device("cpu")], "CPU")  # one device: 650 s in all
    assert d.verdict == DeadlineVerdict.DOES_NOT_FIT and d.makespan_s == 650.0 and d.slack_s == -350.0
    gives = {g.what: g for g in d.gives}
    # drop the longest fine-tuned runs until the rest fits: without a (300) 350 > 300, without b too: 150
    assert gives["runs"].change.endswith("a, b") and gives["runs"].makespan_s == 150.0
    # epochs: the training part (400 s) shrinks; 250 s of evaluation stay: share = (300 - 250) / 400
    assert gives["epochs"].makespan_s == pytest.approx(300.0, abs=0.5)
    assert "12%" in gives["epochs"].change or "13%" in gives["epochs"].change
    # evaluation samples: 400 s of training stay > 300: evaluation alone cannot make it fit
    assert "eval_samples" not in gives


def test_a_run_without_a_time_leaves_the_verdict_unknown():
    d = judge("1h", 3600.0, [_line("a", 100.0), _line("b", None)], [Device("0")], "one GPU")
    assert d.verdict == DeadlineVerdict.UNKNOWN and d.makespan_s is None and d.unknown[0].startswith("b:")


def test_plan_with_a_deadline_end_to_end(write_spec, tmp_path):
    """`tunelab plan --deadline --json` through the CLI: the verdict as a typed record with every figure's
    source, the levers per run; plan.md's deadline section; a bad --deadline is one line naming the option."""
    spec = write_spec(training={"epochs": 1})
    res = runner.invoke(app, ["plan", str(spec), "--deadline", "90m", "--json", "--md"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    d = out["deadline"]
    assert d["deadline"] == "90m" and d["deadline_s"] == 5400.0 and d["devices"] == ["cpu"]
    assert d["verdict"] in {v.value for v in DeadlineVerdict}
    names = {r["run"] for r in d["runs"]}
    assert names == {"tiny_r4", "tiny_r8", "tiny_base"}
    for r in d["runs"]:
        assert r["eval_source"] and r["eval_start_source"] and (r["kind"] != "finetune" or r["train_source"])
    levers = out["estimates"]["tiny_r4"]["levers"]  # levers default to auto with a deadline
    assert {c["lever"] for c in levers} >= {"micro_batch_split", "gradient_checkpointing", "checkpoint_every"}
    assert all(c["source"] for c in levers)
    split = next(c for c in levers if c["lever"] == "micro_batch_split")
    assert split["value"] == "8 × 1 × 1" and "batch_size set in the spec is kept" in split["why"]  # it wins
    md = (spec.parent / "plan.md").read_text()
    assert "## Deadline" in md and "**Deadline 90m:" in md and "### Levers" in md
    # a CPU plan with no history still answers: the run shapes timed here, each time with its interval
    assert d["verdict"] != "unknown" and d["runs_per_device"] == 1
    # one CPU, one run at a time: each run starts where the one before ended, and the makespan (at P10, P50 and
    # P90) is the sum of the runs' totals
    placed = sorted(d["runs"], key=lambda r: r["start_s"])
    assert placed[0]["start_s"] == 0.0
    assert all(b["start_s"] == pytest.approx(a["end_s"], abs=0.05) for a, b in zip(placed, placed[1:]))
    for span, total in (("makespan_s", "total_s"), ("makespan_p10_s", "total_p10_s"),
                        ("makespan_p90_s", "total_p90_s")):
        assert d[span] == pytest.approx(sum(r[total] for r in d["runs"]), abs=0.11), span
    est = out["estimates"]["tiny_r4"]
    assert est["time_kind"] == "timed" and "timed here" in est["time_source"]
    assert est["time_range"]["basis"].startswith("timed: width σ 0.30 assumed")  # the kind's documented width
    # the deadline prices the run's training with the plan's estimate: its start-up and the rest
    line = next(r for r in d["runs"] if r["run"] == "tiny_r4")
    assert line["train_start_s"] + line["train_s"] == pytest.approx(est["seconds"], abs=0.11)
    assert "P10–P90" in md
    bad = runner.invoke(app, ["plan", str(spec), "--deadline", "6 hours", "--json"])
    assert bad.exit_code == 1 and "--deadline" in bad.stderr and "6 hours" in bad.stderr
