"""Time estimates from one calibration run, on a real run: the calibration configuration is trained here, its
history row is what its summary.json recorded, and the plan of a held-out configuration (another micro-batch and
rank) is exactly what the history rule (forecast/speedhistory.py, forecast/runs.py) gives from that row — worked out
here by hand from the row's raw fields, as recorded (idle or contended) and with a recorded ×2 load injected.
No measured time is compared with a prediction here: how close the prediction comes to the held-out run's real time
on this machine is benchmarks/estimate_accuracy.py's figure (its median error over six held-out configurations)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest

from tunelab.host.cpuload import LoadWindow
from tunelab.ledger import history
from tunelab.ledger import store as ledger
from tunelab.plan.planner import make_plan
from tunelab.rundir.experiment import load_runs
from tunelab.scaffold.write import scaffold

pytestmark = pytest.mark.slow


def _train(cfg) -> None:
    with open(cfg.run_dir / "train.log", "w") as log:
        subprocess.run(["bash", str(cfg.run_dir / "job.sh")], stdout=log, stderr=subprocess.STDOUT, check=True)


def _by_hand(row: history.HistoryRun, est) -> tuple[float, float]:
    """(tokens/s, seconds) of the held-out run from the one history row, by the stated rule: a row timed under
    contention has every time it measured divided by its slowdown; a step of the held-out run costs the row's fixed
    part (same model: same layers; no accumulation either side) + its per-token part × the held-out tokens per step
    (same model and sequence length: FLOPs per token ×1); the time is the row's start-up + training tokens ÷ that
    speed × (1 + the row's overhead over its training time) + the row's finish, to 0.1 s."""
    slow = (row.slowdown or 1.0) if row.contended else 1.0
    assert row.per_token_s is not None and row.step_fixed_s is not None and row.train_time_s
    tokens_per_step = est.train_tokens / est.steps
    tps = tokens_per_step / (row.step_fixed_s / slow + row.per_token_s / slow * tokens_per_step)
    overhead = (row.overhead_s or 0.0) / row.train_time_s
    seconds = (row.startup_s or 0.0) / slow + est.train_tokens / tps * (1 + overhead) + (row.finish_s or 0.0) / slow
    return tps, round(seconds, 1)


def _check_plan(spec, row: history.HistoryRun) -> None:
    est = make_plan(spec).estimates["r16_bs16"]
    assert est.time_source.startswith("history: 1 measured run(s) of this model"), est.time_source
    assert ("under contention" in est.time_source) == bool(row.contended), (est.time_source, row)
    # every example is the same length (5-letter words, one prompt format): no padding, the held-out micro-batch
    # is twice the calibration's tokens, and the FLOPs per token carried between the two are the same
    assert est.tokens_per_microbatch == 2 * row.tokens_per_step and est.train_tokens == est.steps * 16 * (
        row.tokens_per_step / 8)
    tps, seconds = _by_hand(row, est)
    assert est.tokens_per_s == pytest.approx(tps, abs=0.051), (est.tokens_per_s, tps, row)
    assert est.seconds_raw == pytest.approx(seconds, abs=0.051), (est.seconds_raw, seconds, row)
    assert est.startup_s == pytest.approx(round((row.startup_s or 0.0) / ((row.slowdown or 1.0) if row.contended
                                                                           else 1.0), 1), abs=0.051)


def test_heldout_time_planned_from_one_calibration_run_by_the_history_rule(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    spec = write_spec(factors={"lora_rank": [8, 16], "batch_size": [8, 16]}, controls=False,
                      naming="r{lora_rank}_bs{batch_size}", training={"epochs": 2, "logging_steps": 5})
    runs = {c.name: c for c in scaffold(spec).runs}
    _train(runs["r8_bs8"])
    ledger.ingest_all(spec.parent, load_runs(spec.parent))
    (row,) = history.load()
    # the row is what the run recorded: its speed, its fixed + per-token split, its start-up and the load it had
    summary = json.loads((runs["r8_bs8"].run_dir / "summary.json").read_text())
    cost, load = summary["step_cost"], summary["load"]
    assert row.kind == "measured" and row.device == "cpu" and (row.batch_size, row.lora_rank) == (8, 8)
    assert row.tokens_per_s == summary["tokens_per_s"] and row.tokens_per_step == summary["tokens"] / summary["steps"]
    assert (row.per_token_s, row.step_fixed_s) == (cost["per_token_s"], cost["fixed_s"])
    assert (row.startup_s, row.finish_s, row.overhead_s, row.train_time_s) == (
        summary["startup_s"], summary["finish_s"], summary["overhead_s"], summary["train_time_s"])
    assert row.startup_s > 0 and row.train_time_s > 0
    window = LoadWindow.from_json(load)  # the measured fields summary.json holds; the row derives its own from them
    assert window is not None and (row.contended, row.slowdown) == (window.contended, round(window.slowdown, 3))
    _check_plan(spec, row)  # as recorded (idle: as measured; contended: corrected by its own slowdown)

    # the same row recorded under a ×2 load: every time it measured halved, said so in the source
    loaded = replace(row, contended=True, slowdown=2.0, others_share=0.5)
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "loaded.db"))
    history.record([loaded])
    _check_plan(spec, loaded)
    assert "up to ×2.0 slower" in make_plan(spec).estimates["r16_bs16"].time_source
