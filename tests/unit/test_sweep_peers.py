"""The whole-sweep benchmark's pieces that need no peer and no model (benchmarks/peerlib/sweep_*.py, issue 66 item 1):
the rows' length summary, the closing lines from injected rows, each peer's packed batch, --continue's rows; each against figures worked
by hand (the rows drawn from a seed: tests/e2e/test_sweep_peers_smoke.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peerlib import sweep_data, sweep_run, sweep_summary  # noqa: E402
from peerlib.registry import Found  # noqa: E402
from peerlib.sweep_peer import axolotl_packed, llamafactory_packed, torchtune_packed  # noqa: E402
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


def test_llamafactory_and_axolotl_pack_with_isolation_and_the_same_batch_rule():
    sweep = SweepSpec(micro_batch=8, max_seq_len=512)
    # 8 rows of 160 tokens = 1,280 tokens = 2.5 packs of 512: round to 2 (half to even)
    assert llamafactory_packed({"packing": False, "per_device_train_batch_size": 8}, sweep, 160.0) == \
        {"packing": True, "neat_packing": True, "per_device_train_batch_size": 2}
    assert axolotl_packed({"sample_packing": False, "micro_batch_size": 8}, sweep, 200.0) == \
        {"sample_packing": True, "attn_implementation": "sdpa", "micro_batch_size": 3}


def test_continue_keeps_earlier_rows_and_runs_none_of_their_pairs(tmp_path):
    rows_file = tmp_path / "sweep_rows.jsonl"
    earlier = [_row("tunelab", 0, 10.0), _row("torchtune", 0, 30.0)]
    for row in earlier:
        sweep_run.keep(row, rows_file)
    read = sweep_run.earlier_rows(rows_file)
    assert read == earlier  # outcomes back as Outcome records, not dicts
    seen: list[list[SweepResult]] = []
    # every (tool, repeat) of one repeat is done: nothing is run (a Found no runner could start would fail loudly)
    found = [Found("tunelab", None, None), Found("torchtune", None, None)]
    rows = sweep_run.compare(found, None, SweepSpec(), tmp_path / "runs", 1, {}, 0.0,  # type: ignore[arg-type]
                             rows_file, after=seen.append, earlier=read)
    assert rows == earlier and seen == [] and not (tmp_path / "runs").exists()
    assert sweep_run.earlier_rows(tmp_path / "absent.jsonl") == []
