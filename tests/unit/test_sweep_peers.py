"""The whole-sweep benchmark's pieces that need no peer and no model (benchmarks/peerlib/sweep_*.py, issue 66 item 1):
the rows' length summary, the closing lines from injected rows, torchtune's packed batch; each against figures worked
by hand (the rows drawn from a seed: tests/e2e/test_sweep_peers_smoke.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peerlib import sweep_data, sweep_summary  # noqa: E402
from peerlib.sweep_peer import torchtune_packed  # noqa: E402
from peerlib.sweep_spec import Outcome, SweepResult, SweepSpec  # noqa: E402


def test_describe_counts_median_p99_and_the_cut():
    # 100 rows 1..100: median 50.5 (printed 50 by :.0f's half-to-even), P99 the 99th, max 100, 10 over 90
    assert sweep_data.describe(list(range(100, 0, -1)), 90) == \
        "100 rows, tokens median 50, P99 99, max 100, 10 over max_seq_len 90"


def _row(tool: str, repeat: int, wall: float | None, error: str | None = None) -> SweepResult:
    return SweepResult(tool=tool, version="v", repeat=repeat, wall_s=wall, phases={"all": wall or 0.0},
                       peak_pss_mib=100.0, outcomes=[Outcome("base", accuracy=0.5)], error=error)


def test_closing_lines_are_median_over_median_and_failures_say_why():
    rows = [_row("tunelab", 0, 10.0), _row("torchtune", 0, 30.0), _row("tunelab", 1, 14.0),
            _row("torchtune", 1, 20.0), _row("tunelab", 2, 12.0), _row("torchtune", 2, 25.0),
            _row("oumi", 0, None, "no environment")]
    # torchtune's median 25 over tunelab's 12
    assert sweep_summary.ratio_lines(rows) == ["sweep: tunelab ÷ torchtune = 2.08x (wall, median of 3; tunelab's of 3)"]
    assert sweep_summary.failure_lines(rows) == ["sweep: oumi could not run: no environment"]
    table = sweep_summary.table(rows, "1 1 1")
    assert "| tunelab | v | 3 | 12.0 | 10.0–14.0 | all 100% | 100 |" in table


def test_torchtune_packed_batch_holds_about_a_micro_batch_of_rows():
    config = {"dataset": {"packed": False}, "batch_size": 8}
    # 8 rows of 96 tokens on average = 768 tokens = 1.5 packs of 512: 2 packs a step
    assert torchtune_packed(config, SweepSpec(micro_batch=8, max_seq_len=512), 96.0) == \
        {"dataset": {"packed": True}, "batch_size": 2}
    assert torchtune_packed(config, SweepSpec(micro_batch=8, max_seq_len=512), 20.0)["batch_size"] == 1
