"""Time estimates against measurements on this machine: one calibration run, then a held-out
configuration (another micro-batch and rank) predicted from history and then really trained.
Ratios only (predicted ÷ measured), never absolute seconds."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tunelab.ledger import history

from tunelab.ledger import store as ledger
from tunelab.rundir.experiment import load_runs
from tunelab.plan.planner import make_plan
from tunelab.scaffold.write import scaffold

pytestmark = pytest.mark.slow


def _train(cfg) -> float:
    t0 = time.monotonic()
    with open(cfg.run_dir / "train.log", "w") as log:
        subprocess.run(["bash", str(cfg.run_dir / "job.sh")], stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.monotonic() - t0


def test_heldout_time_predicted_from_one_calibration_run(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    spec = write_spec(factors={"lora_rank": [8, 16], "batch_size": [8, 16]}, controls=False,
                      naming="r{lora_rank}_bs{batch_size}", training={"epochs": 2, "logging_steps": 5})
    runs = {c.name: c for c in scaffold(spec).runs}
    _train(runs["r8_bs8"])
    ledger.ingest_all(spec.parent, load_runs(spec.parent))
    (row,) = history.load()
    assert row.per_token_s > 0 and row.step_fixed_s is not None and row.startup_s > 0  # a measured split
    # the fixed part is the run's steady step time less the per-token part timed after it (train/step_cost.py):
    # on a quiet machine positive; when the load changed between the two (CI's workers: slowdown 1.51 once), the
    # per-token part can cover the whole step and the fixed part is clamped at 0
    assert row.step_fixed_s > 0 or row.contended, row

    est = make_plan(spec).estimates["r16_bs16"]
    assert est.time_source.startswith("history: 1 measured run(s) of this model")
    measured = _train(runs["r16_bs16"])
    summary = json.loads((runs["r16_bs16"].run_dir / "summary.json").read_text())
    # A 2× band: wide enough for a shared CI machine whose load changes between the two runs, narrow
    # enough for gross errors (steps vs tokens, a missing start-up, epochs not counted). The tight
    # figure (median error over six held-out configurations) is benchmarks/estimate_accuracy.py's job.
    # The plan prices the machine's uncontended speed (a contended calibration is corrected by its slowdown), so
    # a held-out run that trained while other work held the cores is compared at the time and speed its own
    # recorded load says it would have had (summary.json's load, by the rule the history applies) — CI's test
    # workers share two cores with it: measured 7,368 tokens/s against 17,107 predicted once, 8.8 s against 3.9 s
    # another time, uncorrected.
    load = summary["load"]
    slowdown = load["slowdown"] if load["contended"] else 1.0
    assert 0.5 <= est.seconds / (measured / slowdown) <= 2.0, (est.seconds, measured, load)
    uncontended_tps = summary["tokens_per_s"] * slowdown
    assert 0.5 <= est.tokens_per_s / uncontended_tps <= 2.0, (est.tokens_per_s, summary["tokens_per_s"], load)
