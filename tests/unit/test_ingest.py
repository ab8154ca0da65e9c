"""Foreign logs: complete ones are imported into history; truncated, failed and unknown ones are
reported with their reason and skipped (never half-imported)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.ledger import history
from tunelab.cli import app
from tunelab.ingest.torchtune import LogParseError, parse_torchtune_log

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
