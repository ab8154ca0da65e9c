"""A run priced on first contact (nothing measured on this CPU, no probe) pays what the job adds to its bare
micro-batches: the job's loop per step (measured once per machine by a real tiny training, train/loop_cost.py),
ceil(steps / N) validations of its validation split and a save per epoch, each priced by a timing of the shape
(forecast/runs.py). The loop's figure is checked against the rows the measuring job wrote; the run's time is
checked against a hand computation from the timings the plan recorded. No measured time is compared with a
prediction here (benchmarks/estimate_accuracy.py does that)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.rundir.config import RunConfig
from tunelab.rundir.metrics import MetricRow


@pytest.fixture(scope="module")
def loop_measured(tmp_path_factory) -> tuple[Path, dict]:
    """The measuring job, run for real as the plan runs it: (its directory, what it wrote)."""
    out = tmp_path_factory.mktemp("loop")
    proc = subprocess.run([sys.executable, "-m", "tunelab.train.loop_cost", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "loop.json").read_text())


def test_the_loop_job_times_the_jobs_own_loop_from_the_rows_it_wrote(loop_measured):
    _check_rows(*loop_measured)


def test_thread_counts_priced_together_are_measured_by_one_job_and_each_kept(fresh, capsys):
    """A plan pricing 1 and 2 threads a run (forecast/cpu_sharing.py) uses one measuring job for both — the one it
    started ahead, which imported and waited until asked (forecast/loopjob.py) —: the entry kept for 2 threads comes
    from the job that measured 1 (the same start-up, imports_s, timed once in that process), it
    ran at 2 torch threads (as torch reported them in that job), and a later plan reads both from the cache."""
    from tunelab.diskcache import stored_json
    from tunelab.forecast import loopcost, loopjob, planscope

    with loopcost.ahead(True):  # as a plan on a CPU with nothing kept: the job started first, waiting
        job = loopjob._AHEAD.get()
        assert job is not None
        loopjob.settle()  # its imports ended: it waits for its counts and has measured nothing
        assert (job.where / "out" / loopjob.READY_FILE).is_file() and job.proc.poll() is None
        assert not list((job.where / "out").glob("**/loop.json"))
        with planscope.priced_together((1, 2)):
            one = loopcost.loop_overhead(1)
        assert job.used and job.proc.returncode == 0  # the counts went to it; it measured both and ended
    assert not job.where.exists()  # its scratch directory went with the plan's scope
    kept = {n: stored_json("train-loop", loopcost._key(n)) for n in (1, 2)}
    assert kept[1]["ok"] and kept[2]["ok"] and kept[1]["imports_s"] == kept[2]["imports_s"] == one.imports_s
    assert kept[1]["started_ahead"] is kept[2]["started_ahead"] is True
    assert (kept[1]["threads"], kept[2]["threads"]) == (1, 2)
    assert kept[2]["loop_step_s"] > 0 and kept[2]["bare_step_s"] > 0
    assert loopcost.loop_overhead(2) == loopcost.overhead_of(kept[2])
    # the minute of measuring said so on stderr, as it began and with its seconds as it ended; once (the later
    # reads come from the cache); stdout (a --json answer, an MCP server's protocol) untouched
    printed = capsys.readouterr()
    assert printed.out == ""
    lines = [x for x in printed.err.splitlines() if x.startswith("measuring what the training loop adds")]
    assert len(lines) == 2 and all("at 1 and 2 thread(s)" in x for x in lines)
    assert lines[0].endswith(" …") and re.search(r"plans\): \d+ s$", lines[1])


def _check_rows(out: Path, got: dict) -> None:
    run_dir = out / "runs" / "loop_cost"
    rows = [MetricRow(**json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.loss is not None]
    assert [r.step for r in train] == list(range(5, 41, 5))  # the job's callback logged every 5 steps of 40
    first, last = train[1], train[-1]  # the first row past warm-up, the last
    per_step = (last.train_time_s - first.train_time_s) / (last.step - first.step)
    assert got["loop_step_s"] == pytest.approx(per_step, abs=1e-6)
    assert got["tokens_per_step"] == pytest.approx((last.tokens - first.tokens) / (last.step - first.step), abs=0.05)
    assert got["steps"] == 40 and got["bare_step_s"] > 0 and got["imports_s"] > 0
    assert json.loads((run_dir / "status.json").read_text())["step"] == 40  # the job's status writes ran too


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _cfg(root: Path, model: Path, **training) -> RunConfig:
    return RunConfig(name="r", kind="finetune", experiment="x", experiment_dir=str(root),
                     model={"name": "tiny", "path": str(model)}, dataset={"name": "caps", "path": str(root / "d.json")},
                     prompt="Capitalize: {input}", training={"batch_size": 8, "max_seq_len": 64, **training})


@pytest.mark.parametrize("every, validations", [(4, 4), (5, 4), (None, 0)])  # 16 steps: ceil(16 / N), never 16 // N + 1
def test_first_contact_adds_the_loop_validations_and_saves_as_a_hand_computation_says(
        loop_measured, fresh, tmp_path, tiny_model, monkeypatch, every, validations):
    from tunelab.forecast import loopcost
    from tunelab.forecast.runs import run_time

    overhead = loopcost.overhead_of({"ok": True, **loop_measured[1]})  # the real tiny training's loop, injected
    monkeypatch.setattr(loopcost, "loop_overhead", lambda threads: overhead)
    cfg = _cfg(tmp_path, tiny_model, epochs=2, validation_every_steps=every)
    lengths, val_lengths = [20] * 64, [20] * 24  # 8 steps an epoch of 8 × 20 tokens; 480 validation tokens, no padding
    rt = run_time(cfg, None, lengths, val_lengths, [], cpu_threads=1)

    (entry,) = fresh.glob("cpu-step/*.json")  # what the plan timed for this shape
    timed = json.loads(entry.read_text())["value"]
    factor = timed["slowdown"] if timed["contended"] else 1.0
    assert rt.steps == 16 and rt.tokens_per_microbatch == 160
    assert rt.tokens_per_s == pytest.approx(160 / timed["median_s"] * factor)
    train = rt.train_tokens / rt.tokens_per_s
    loop = 16 * overhead.step_s
    assert ("forward_s" in timed) == bool(every)  # a forward timed only for a run that validates
    each_validation = timed["forward_s"] / factor * 480 / 160 if every else 0.0
    each_save = timed["save_s"] / factor
    parts = rt.first_contact
    assert parts is not None and (parts.validations, parts.saves) == (validations, 2)  # a save at each epoch's end
    assert parts.save_s == pytest.approx(each_save)
    assert not every or parts.validation_s == pytest.approx(each_validation)
    assert rt.startup_s == pytest.approx(loop_measured[1]["imports_s"] + 0.0, abs=0.05)  # the job's imports, kept
    expected = rt.startup_s + train + loop + validations * each_validation + 2 * each_save
    assert rt.seconds == pytest.approx(round(expected, 1), abs=0.051)
    assert "for the job's loop" in rt.source and "2 save(s)" in rt.source
    assert rt.saves_in_time  # so the deadline's saves are not added again (forecast/sweeptime.py)
    assert (f"{validations} validation(s) of 480 tokens" in rt.source) == bool(validations)


def test_a_failed_loop_measurement_prices_the_loop_at_nothing_and_says_why():
    from tunelab.forecast.loopcost import overhead_of

    got = overhead_of({"ok": False, "error": "ModuleNotFoundError: No module named 'trl'"})
    assert got.step_s == 0.0 and "measuring it failed: ModuleNotFoundError" in got.source
    contended = overhead_of({"ok": True, "loop_step_s": 0.05, "bare_step_s": 0.03, "contended": True,
                             "slowdown": 2.0})
    assert contended.step_s == pytest.approx(0.01) and "divided by ×2.0" in contended.source  # (50 − 30) ms / 2


def test_validations_are_ceil_of_steps_over_their_interval():
    from tunelab.forecast.runs import validation_count

    assert [validation_count(s, 4) for s in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    assert validation_count(16, None) == 0 and validation_count(0, 4) == 0


def _row_on_this_cpu(**shape):
    from tunelab.ledger.history import HistoryRun

    return HistoryRun(key="elsewhere/runs/r", source="tunelab", model="tiny", layers=2, hidden=64, parameters=10**6,
                      device="cpu", cpu_threads=1, batch_size=8, max_seq_len=64, tokens_per_step=160.0,
                      tokens_per_s=900.0, **shape)


def test_a_shape_whose_lora_targets_no_row_of_this_cpu_has_is_timed_here(
        loop_measured, fresh, tmp_path, tiny_model, monkeypatch):
    """A history of other LoRA targets on this CPU says nothing of this shape (speed_from_history ignores it): the
    plan times the shape, as on an empty history, instead of leaving the run unpriced (the search of issue 52 ran
    one lane because of it). A row that differs only in checkpointing is left to the levers to price across."""
    from tunelab.forecast import cpuspeed, loopcost
    from tunelab.forecast.runs import run_time
    from tunelab.forecast.speedhistory import SourceKind

    monkeypatch.setattr(loopcost, "loop_overhead", lambda threads: loopcost.overhead_of({"ok": True,
                                                                                        **loop_measured[1]}))
    cfg = _cfg(tmp_path, tiny_model, epochs=1, lora_target_modules=["q_proj", "v_proj"])
    lengths = [20] * 64
    other_targets = [_row_on_this_cpu(lora_targets="all-linear", gradient_checkpointing=False)]
    rt = run_time(cfg, None, lengths, [], other_targets, cpu_threads=1)
    (entry,) = fresh.glob("cpu-step/*.json")
    assert rt.kind == SourceKind.TIMED and rt.seconds is not None and rt.first_contact is not None
    timed = json.loads(entry.read_text())["value"]
    factor = timed["slowdown"] if timed["contended"] else 1.0
    assert rt.tokens_per_s == pytest.approx(160 / timed["median_s"] * factor)

    def not_timed(*args, **kwargs):
        raise AssertionError("timed a shape whose targets a row of this CPU has")

    monkeypatch.setattr(cpuspeed, "timed_cpu_speed", not_timed)
    other_checkpointing = [_row_on_this_cpu(lora_targets="q_proj,v_proj", gradient_checkpointing=True)]
    assert run_time(cfg, None, lengths, [], other_checkpointing, cpu_threads=1).tokens_per_s is None
