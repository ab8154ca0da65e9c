"""Evaluation, predicted, then checked, on real runs: `tunelab probe` times batched generation of the tiny model
and records it as a generation row (checked against what the probe printed, and a prediction on it against the
stated cost model worked out by hand); a finished evaluation records its throughput in the history (checked against
its own .eval log), after which predictions of that model and task rest on it (checked against the history rule
worked out by hand from the rows' raw fields); the report's "Predicted, then checked" table carries the sweep's real
figures, and a run whose training overran its prediction is flagged with the cause its own files record. No test
here compares a measured time with a prediction: how close the predictions come on this machine is a benchmark's
figure (benchmarks/)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from statistics import median

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.forecast.evaltime import HISTORY_ROWS, SAMPLE_OVERHEAD_S, EvalSource, predict_eval_time
from tunelab.ledger import generation
from tunelab.ledger.generation import GenerationOrigin, GenerationRow
from tunelab.rundir.config import load_run_config
from tunelab.rundir.identity import run_key, scores_key
from tunelab.rundir.probe import GenerationSpeed
from tunelab.rundir.scores import read_scores
from tunelab.rundir.summary import read_summary

pytestmark = pytest.mark.slow
runner = CliRunner()
THIS_CPU = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name"))  # /proc/cpuinfo read here, not through tunelab


def _priced(speed, samples: int, prompt: int, generated: int, batch: int) -> float:
    """Prefill + decode of `samples` rows of `prompt` tokens each generating `generated`, at a batch size of `batch`
    on a CPU, by evaltime.py's stated rule worked out here: a decode batch holds two batch sizes of rows (its prefill
    groups of equal prompts pad nothing), prefills rows × prompt tokens at the prefill speed, then runs `generated`
    decode steps of (fixed + per row × rows) each."""
    seconds = 0.0
    for start in range(0, samples, 2 * batch):
        rows = min(2 * batch, samples - start)
        seconds += rows * prompt / speed.prefill_tokens_per_s
        seconds += generated * (speed.decode_fixed_s + speed.decode_row_s * rows)
    return seconds


def test_probe_records_generation_speed_and_predictions_use_it(write_spec, tiny_model, tmp_path, monkeypatch):
    """The probe's generation row says what the probe printed, and a prediction prices a workload with that row's
    figures exactly. (Whether the probe's speed is right on this machine is a benchmark's question, not a test's.)"""
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    spec = write_spec(factors={"lora_rank": [4]})
    res = runner.invoke(app, ["probe", str(spec)])
    assert res.exit_code == 0, res.output
    [row] = generation.load()
    assert row.origin == GenerationOrigin.PROBED and row.model_path == str(tiny_model) and row.device == "cpu"
    assert row.batch_size == 16 and row.samples is None and row.wall_s is None  # a probe, not an evaluation
    assert row.cpu_model == THIS_CPU  # the probe job's CPU: a row prices this CPU's evaluations only
    speed = row.speed()
    assert speed is not None and speed.prefill_tokens_per_s > 0
    assert speed.decode_fixed_s >= 0 and speed.decode_row_s >= 0 and speed.decode_fixed_s + speed.decode_row_s > 0
    # the line the probe printed carries the row's own figures: prefill tokens/s, decode tokens/s at batch 16
    decode = 16 / (speed.decode_fixed_s + 16 * speed.decode_row_s)
    assert f"generation: prefill {speed.prefill_tokens_per_s:,.0f} tokens/s, decode {decode:,.0f} tokens/s at " \
           "batch 16" in res.output, res.output
    # the next prediction of this model rests on the row: 32 samples of 40 prompt tokens, 12 new tokens each, at a
    # batch size of 16 — one decode batch of 32 rows (two prefill groups) priced by hand from the row's figures, +
    # the evaluator's assumed work per sample
    batch, prompt, new = 16, 40, 12
    got = predict_eval_time(model=tiny_model, gpu=None, samples=32, prompt_tokens=[prompt] * 32, max_tokens=new,
                            batch_size=batch, task="caps")
    assert got.source == EvalSource.PROBED and got.batches == 1 and got.decode_steps == new
    assert got.speed == speed  # no history of this model and task: the probe's speed as it is
    assert got.prefill_s == pytest.approx(2 * batch * prompt / speed.prefill_tokens_per_s, abs=6e-4)
    assert got.generation_s == pytest.approx(new * (speed.decode_fixed_s + 2 * batch * speed.decode_row_s), abs=6e-4)
    assert got.overhead_s == pytest.approx(32 * SAMPLE_OVERHEAD_S, abs=6e-4)
    expected = _priced(speed, 32, prompt, new, batch) + 32 * SAMPLE_OVERHEAD_S
    assert got.seconds == pytest.approx(expected, abs=6e-4), (got.seconds, expected)
    shown = runner.invoke(app, ["history"]).output  # `tunelab history` lists the generation row after the runs
    assert "generation (evaluation's predicted time rests on these)" in shown and "prefill" in shown


# A probed speed of the sweep's model with figures set here: the base the history's rows calibrate (no timing of
# this machine's enters the expected figure)
SPEED = {"prefill_tokens_per_s": 20000.0, "decode_fixed_s": 0.004, "decode_row_s": 0.0005}


def _foreign_rows(row: GenerationRow) -> list[GenerationRow]:
    """Measured rows the prediction must pass over although they are the newest: another task, another device,
    another model, and one without the generated tokens (a scores.json from before they were kept)."""
    from dataclasses import replace

    far = dict(wall_s=1000.0, recorded_at="9999-12-31T00:00:00")
    return [replace(row, key="other-task", task="other", **far),
            replace(row, key="other-device", device="NVIDIA H100 80GB HBM3", **far),
            replace(row, key="other-model", model_path=str(Path(row.model_path).parent / "elsewhere"), **far),
            replace(row, key="no-tokens", generated_tokens=None, **far)]


def _calibrated_by_hand(rows: list[GenerationRow], speed: GenerationSpeed, samples: int, prompt: int,
                        max_tokens: int, batch: int) -> float:
    """evaltime.py's history rule worked out here from the rows' raw fields: each row's wall time ÷ its concurrent
    target × tasks is its share; its share ÷ what `speed` + SAMPLE_OVERHEAD_S per sample price its own workload
    (its mean prompt, its mean generated tokens in every row) is its ratio; the prediction is the median ratio ×
    the new workload's price, every sample generating the rows' mean generated tokens (at most max_tokens)."""
    ratios = []
    for r in rows:
        assert r.samples and r.wall_s and r.concurrent and r.generated_tokens is not None and r.batch_size
        share = r.wall_s / r.concurrent
        own = _priced(speed, r.samples, round((r.prompt_tokens or 0) / r.samples),
                      max(1, round(r.generated_tokens / r.samples)), r.batch_size)
        ratios.append(share / (own + SAMPLE_OVERHEAD_S * r.samples))
    mean_generated = sum(r.generated_tokens / r.samples for r in rows) / len(rows)  # type: ignore[operator]
    generated = max(1, min(max_tokens, round(mean_generated)))
    return median(ratios) * (_priced(speed, samples, prompt, generated, batch) + SAMPLE_OVERHEAD_S * samples)


def test_a_finished_evaluation_records_its_throughput_and_the_next_prediction_rests_on_it(finished_sweep):
    from inspect_ai.log import read_eval_log

    exp = finished_sweep.exp
    scores = [(d, s) for d in sorted([*(exp / "runs").iterdir(), *(exp / "controls").iterdir()])
              for s in read_scores(d)]
    keys = {(d, s.label, s.task): f"eval:{scores_key(load_run_config(d), s)}" for d, s in scores}  # its identity
    sweep_rows = [r for r in generation.load() if r.origin == GenerationOrigin.MEASURED and r.key in keys.values()]
    rows = {r.key: r for r in sweep_rows}
    assert len(scores) == 9 and len(rows) == 9  # 4 epochs × 2 runs + the control, one task
    for run_dir, s in scores:
        row = rows[keys[run_dir, s.label, s.task]]
        assert s.cpu_model == row.cpu_model == THIS_CPU  # the evaluation job's CPU, from scores.json to the row
        log = read_eval_log(str(run_dir / "eval" / s.label / s.task / s.log))
        outputs = [smp.output.usage.output_tokens for smp in log.samples or [] if smp.output.usage]
        assert len(outputs) == s.samples == row.samples == 40
        assert row.generated_tokens == sum(outputs) > 0  # what the samples generated, one by one
        assert row.wall_s == s.duration_s and row.batch_size == 16 and row.task == s.task and row.device == "cpu"
        assert row.model_path == s.model_path and row.concurrent == s.concurrent and row.concurrent >= 1
        assert row.prompt_tokens == s.prompt_tokens and row.recorded_at == s.evaluated_at
    # the next prediction of this model and task rests on them: exactly the documented rule over the last
    # HISTORY_ROWS of them, on a probed speed set here, the newest rows of another task, device or model ignored
    base = next(s for _, s in scores if s.label == "base")
    prompt = round((base.prompt_tokens or 0) / base.samples)
    probe = GenerationRow(key="probe-gen:test", origin=GenerationOrigin.PROBED, model_path=base.model_path,
                          device="cpu", batch_size=16, recorded_at="2000-01-01T00:00:00", **SPEED)
    history = [probe, *sweep_rows, *_foreign_rows(sweep_rows[-1])]
    got = predict_eval_time(model=base.model_path, gpu=None, samples=40, prompt_tokens=[prompt] * 40,
                            max_tokens=8, batch_size=16, task=base.task, generation=history)
    assert HISTORY_ROWS == 3 and got.source == EvalSource.HISTORY, got.detail
    assert got.detail.startswith(f"history: 3 evaluation(s) of this model on task {base.task} took ×"), got.detail
    expected = _calibrated_by_hand(sweep_rows[-HISTORY_ROWS:], GenerationSpeed(**SPEED), 40, prompt, 8, 16)
    assert got.seconds == pytest.approx(expected, abs=6e-4), (got.seconds, expected, got.detail)
    # and with the history as it is (the sweep's rows recorded by its ingest): the prediction rests on them too
    again = predict_eval_time(model=base.model_path, gpu=None, samples=40, prompt_tokens=[prompt] * 40,
                              max_tokens=8, batch_size=16, task=base.task)
    assert again.source == EvalSource.HISTORY and "evaluation(s) of this model on task" in again.detail


def test_a_finished_sweep_records_each_parts_prediction_beside_its_measurement(finished_sweep):
    """The loop closed: ingesting the completed sweep recorded, per run, the training job's start-up, the training
    past it and the evaluation — each prediction as run.yaml had it before correction, each measurement as the
    run's own files have it — under the source's kind and the device; the next plan's corrections read them."""
    from tunelab.ledger import predictions
    from tunelab.ledger.predictions import PredictedPart

    exp = finished_sweep.exp
    records = {r.key: r for r in predictions.load()}
    for run in finished_sweep.runs:
        cfg = load_run_config(exp / "runs" / run / "run.yaml")
        key = run_key(cfg)  # the run's identity (rundir/identity.py)
        est, summary = cfg.estimate, read_summary(exp / "runs" / run)
        assert est is not None and summary is not None and summary.duration_s is not None
        assert est.seconds_raw and est.time_kind and est.time_range is not None
        train = records[f"{key}#{PredictedPart.TRAIN}"]
        start = est.startup_raw_s or 0.0
        assert train.source == est.time_kind and train.device == "cpu"
        assert train.predicted_s == pytest.approx(est.seconds_raw - start, abs=1e-3)
        assert train.measured_s == pytest.approx(summary.duration_s + (summary.finish_s or 0.0))
        if est.startup_kind and start:
            first = records[f"{key}#{PredictedPart.TRAIN_START}"]
            # a job forked warm (a local sweep's lanes): its own start-up plus the imports its warm process paid
            assert (first.predicted_s, first.measured_s) == (start, summary.cold_startup_s())
            assert first.measured_s == (summary.startup_s if not summary.started_warm else
                                        round(summary.startup_s + summary.warm_imports_s, 3))
        ev = records[f"{key}#{PredictedPart.EVAL}"]
        shares = sum(sc.duration_s / (sc.concurrent or 1) for sc in read_scores(cfg.run_dir))
        assert ev.predicted_s == est.eval_raw_s and ev.measured_s == pytest.approx(shares, abs=1e-3)


def _checked_rows(report: str) -> dict[tuple[str, str], list[str]]:
    """The 'Predicted, then checked' table: (run, figure) -> its cells."""
    part = report.split("## Predicted, then checked", 1)[1].split("\n## ", 1)[0]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in part.splitlines()
             if line.startswith("| ") and not line.startswith("| Run ")]
    return {(c[0], c[1]): c for c in cells}


def test_report_checks_every_prediction_and_flags_an_overrun_with_its_cause(finished_sweep, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(finished_sweep.exp, exp, symlinks=True)
    table = _checked_rows((finished_sweep.exp / "report" / "report.md").read_text())  # the fixture's report
    for run in (*finished_sweep.runs, finished_sweep.control):
        ev = table[(run, "evaluation")]
        predicted, measured = ev[2], ev[3]
        # predicted at plan time with its P10–P90, measured after
        assert re.fullmatch(r"[\d.]+ s \([\d.]+ (s|min)–[\d.]+ (s|min)\)", predicted) and measured.endswith(" s"), ev
        shares = sum(s.duration_s / (s.concurrent or 1) for s in read_scores(finished_sweep.exp / _dir(run)))
        # shown to 0.1 s from the ledger's record (within 1 ms of the scores' sum): 1.2496 and 1.2504 show apart
        assert abs(float(measured.removesuffix(" s")) - shares) <= 0.05 + 1e-3, (measured, shares)
    for run in finished_sweep.runs:
        s = read_summary(finished_sweep.exp / "runs" / run)
        assert s is not None and s.duration_s is not None
        assert table[(run, "training")][3] == _shown((s.startup_s or 0) + s.duration_s + (s.finish_s or 0))
        assert table[(run, "peak memory")][3] == f"{s.peak_memory_gib:.2f} GiB"
        assert table[(run, "peak memory")][2] == "—"  # a CPU plan predicts no peak: measured, shown unjudged
    assert re.fullmatch(r"[\d.]+ (s|min)", table[("sweep", "makespan")][3])

    # a plan that expected tiny_r4 to train 3 × as fast as it did: its report flags it, from summary.json
    run_yaml = exp / "runs" / "tiny_r4" / "run.yaml"
    cfg = yaml.safe_load(run_yaml.read_text())
    summary = read_summary(exp / "runs" / "tiny_r4")
    assert summary is not None and summary.tokens_per_s and summary.duration_s
    measured_s = (summary.startup_s or 0) + summary.duration_s + (summary.finish_s or 0)
    third = round(measured_s / 3, 1)
    cfg["estimate"].update(seconds=third, tokens_per_s=summary.tokens_per_s * 3, startup_s=summary.startup_s,
                           time_source="history: a test's expectation",
                           time_range={"p10_s": third * 0.8, "p50_s": third, "p90_s": third * 1.2})
    run_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # and tiny_r16 expected to train 3 × as slow as it did: a plan too slow is flagged too, below its P10
    slow_yaml = exp / "runs" / "tiny_r16" / "run.yaml"
    slow = yaml.safe_load(slow_yaml.read_text())
    s16 = read_summary(exp / "runs" / "tiny_r16")
    assert s16 is not None and s16.tokens_per_s and s16.duration_s
    m16 = (s16.startup_s or 0) + s16.duration_s + (s16.finish_s or 0)
    slow["estimate"].update(seconds=round(m16 * 3, 1), tokens_per_s=s16.tokens_per_s / 3, time_kind="timed",
                            time_source="timed here: a test's expectation",
                            time_range={"p10_s": m16 * 2, "p50_s": m16 * 3, "p90_s": m16 * 4})
    slow_yaml.write_text(yaml.safe_dump(slow, sort_keys=False))
    span = _measured_span(table)  # and a sweep expected in a third of the time it took
    for path in [*(exp / "runs").glob("*/run.yaml"), *(exp / "controls").glob("*/run.yaml")]:
        other = yaml.safe_load(path.read_text())
        other["estimate"].update(makespan_s=round(span / 3, 1), makespan_source="a test's expectation",
                                 makespan_range=None)
        path.write_text(yaml.safe_dump(other, sort_keys=False))
    res = runner.invoke(app, ["report", str(exp)])
    assert res.exit_code == 0, res.output
    report = (exp / "report" / "report.md").read_text()
    row = _checked_rows(report)[("tiny_r4", "training")]
    assert row[4] == f"{round(measured_s, 3) / round(measured_s / 3, 1):.2f}×" and row[5] == "**over its P90**"
    line = next(ln for ln in report.splitlines() if ln.startswith("- **tiny_r4** training"))
    assert f"training speed mis-predicted: {summary.tokens_per_s:,.0f} tokens/s measured, " \
           f"{summary.tokens_per_s * 3:,.0f} predicted (history: a test's expectation)" in line
    assert _checked_rows(report)[("tiny_r16", "training")][5] == "**under its P10**"
    line = next(ln for ln in report.splitlines() if ln.startswith("- **tiny_r16** training"))
    assert "(under)" in line and f"training speed under-predicted: {s16.tokens_per_s:,.0f} tokens/s measured, " \
           f"{s16.tokens_per_s / 3:,.0f} predicted (timed: timed here: a test's expectation)" in line
    sweep = _checked_rows(report)[("sweep", "makespan")]
    assert sweep[5] == "**overran**" and sweep[6] == "a test's expectation"
    line = next(ln for ln in report.splitlines() if ln.startswith("- **sweep** makespan"))
    assert "tiny_r4's training overran by" in line  # the run that overran is named as a cause of the sweep's


def _measured_span(table: dict[tuple[str, str], list[str]]) -> float:
    value, unit = table[("sweep", "makespan")][3].split()
    return float(value) * (60 if unit == "min" else 1)


def _dir(run: str) -> str:
    return f"controls/{run}" if run.endswith("_base") else f"runs/{run}"


def _shown(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def test_overrun_causes_are_priced_and_ranked_from_the_recorded_figures(finished_sweep, tmp_path):
    """The cause rule on a real run's records with hand-set figures: a data wait that explains the excess is
    named first; one under a tenth of it is not, and then nothing recorded explains the overrun."""
    from dataclasses import replace

    from tunelab.report.data import gather
    from tunelab.report.overruns import training_causes
    from tunelab.report.predicted import Check, measured_training_s

    exp = tmp_path / "exp"
    shutil.copytree(finished_sweep.exp, exp, symlinks=True)
    run = next(r for r in gather(exp).runs if r.name == "tiny_r4")
    measured = measured_training_s(run)
    assert measured and run.config.estimate is not None and run.summary.tokens_per_s
    run.config = run.config.model_copy(update={"estimate": run.config.estimate.model_copy(update=dict(
        seconds=measured / 2, tokens_per_s=run.summary.tokens_per_s, startup_s=run.summary.startup_s))})
    check = Check("training", measured / 2, measured, "s")
    wait_s = round(0.3 * measured, 1)  # the wait as recorded (to 0.1 s): the cause prints that figure
    run.summary = replace(run.summary, data_wait_s=wait_s, data_wait_fraction=0.3)
    [cause] = training_causes(run, check)  # speed and start-up as predicted: the wait alone
    assert cause.startswith(f"data wait: the training loop waited {wait_s:.0f} s for batches, 30% ")
    run.summary = replace(run.summary, data_wait_s=round(0.04 * measured, 2), data_wait_fraction=0.06)
    assert training_causes(run, check) == [f"not explained by what was recorded (over by {measured / 2:.0f} s)"]
