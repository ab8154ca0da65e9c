"""Foreign logs: complete ones are imported into history; truncated, failed and unknown ones are
reported with their reason and skipped (never half-imported)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.ingest.torchtune import LogParseError, parse_torchtune_log
from tunelab.ledger import history

LOGS = Path(__file__).parent.parent / "fixtures" / "logs"


def test_parse_complete_log_with_noise():
    run = parse_torchtune_log((LOGS / "torchtune_ok.out").read_text())
    assert run.model == "Llama-3.2-1B" and run.recipe == "LoRAFinetuneRecipeSingleDevice"
    assert run.config["batch_size"] == 4 and run.packed is False
    assert run.steps == 218 and run.epochs_seen == 2
    assert run.steps_per_s == pytest.approx((4.34 * 2 + 4.40 * 3) / 5)  # first bar's first update: warm-up
    assert run.peak_memory_gib["allocated"] == 5.12  # max of the memory stats and the run summary
    assert run.summary["val_loss"] == 0.02345 and run.checkpoint_seconds == [33.06]


def test_seconds_per_iteration_is_inverted():
    run = parse_torchtune_log((LOGS / "torchtune_slow.out").read_text())
    assert run.steps_per_s == pytest.approx(1 / 8.38, rel=1e-3)


@pytest.mark.parametrize("name, reason", [("torchtune_truncated.out", "truncated: 1 of 2 epochs"),
                                          ("torchtune_timeout.out", "cancelled due to time limit"),
                                          ("torchtune_oom.out", "ran out of memory"),
                                          ("not_a_log.out", "not a torchtune log")])
def test_incomplete_logs_are_refused_with_reason(name, reason):
    with pytest.raises(LogParseError, match=reason):
        parse_torchtune_log((LOGS / name).read_text())


def test_ingest_cli_imports_only_complete_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    res = CliRunner().invoke(app, ["ingest", str(LOGS), "--gpu", "A100-80GB"])
    assert res.exit_code == 0, res.output
    assert "2 of 6 log(s) imported" in res.output
    assert res.output.count("skipped") == 4
    rows = {r.run: r for r in history.load()}
    ok = rows["torchtune_ok"]
    assert ok.source == "torchtune-log" and ok.device == "A100-80GB" and ok.parameters == 1235814400
    assert ok.steps_per_s == pytest.approx(4.376) and ok.tokens_per_s == 1224.1
    assert "torchtune_truncated" not in rows
    # importing again replaces, never duplicates
    CliRunner().invoke(app, ["ingest", str(LOGS)])
    assert sum(1 for r in history.load() if r.run == "torchtune_ok") == 1


def _without(lines_with: tuple[str, ...]) -> str:
    """torchtune_ok.out with the lines holding any of `lines_with` dropped: the log a run whose wandb summary
    lacks those counters prints."""
    text = (LOGS / "torchtune_ok.out").read_text()
    return "\n".join(ln for ln in text.splitlines() if not any(s in ln for s in lines_with)) + "\n"


@pytest.mark.parametrize("dropped, peak, kind", [
    ((), 5.12, "cuda_max_allocated"),
    (("peak_memory_alloc",), 6.01, "cuda_max_reserved"),  # the planner compares it with the simulated reserved
    (("peak_memory_alloc", "peak_memory_reserved"), 5.12, "cuda_max_active"),  # recorded, never priced with
])
def test_the_training_peak_comes_from_whichever_counter_the_log_has(tmp_path, monkeypatch, dropped, peak, kind):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    log = tmp_path / "slurm-123.out"
    log.write_text(_without(dropped))
    run = parse_torchtune_log(log.read_text())
    assert "allocated" not in run.peak_memory_gib or not dropped  # the after-init figures are never the peak
    assert run.training_peak() == (peak, kind)
    from tunelab.ingest import ingest_logs

    assert [r.imported for r in ingest_logs([log], device="NVIDIA A100-SXM4-80GB")] == [True]
    row = next(r for r in history.load() if r.run == "slurm-123")
    assert (row.peak_memory_gib, row.memory_kind) == (peak, kind)
    assert "peak_memory_gib" not in (row.missing or "")


def test_a_log_without_any_training_peak_records_none(tmp_path):
    run = parse_torchtune_log(_without(("peak_memory_",)))
    assert run.training_peak() == (None, None)  # only the after-init block: weights, not a training peak
