"""The run directory's typed records keep the exact JSON keys on disk (old experiments stay readable)."""

import json

from tunelab.rundir.metrics import MetricRow, append_metric, read_metrics, steady_tokens_per_s
from tunelab.rundir.stages import StageRecord, read_stage_records, write_stage_records
from tunelab.rundir.status import Status, read_status, write_new_status, write_status
from tunelab.rundir.summary import Summary, read_summary, write_summary


def test_status_merges_and_keeps_keys(tmp_path):
    assert read_status(tmp_path) == Status()
    write_status(tmp_path, run="r", state="running", error=None, resumed_from=None)
    st = write_status(tmp_path, step=3)
    data = json.loads((tmp_path / "status.json").read_text())
    assert set(data) == {"run", "state", "error", "resumed_from", "step", "updated_at", "host", "pid"}
    assert st.step == 3 and st.state == "running" and st.error is None


def test_status_rejects_unknown_fields_and_keeps_unknown_keys(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"state": "failed", "future": 1}))
    assert read_status(tmp_path).extra == {"future": 1}
    write_status(tmp_path, state="running")
    assert json.loads((tmp_path / "status.json").read_text())["future"] == 1
    try:
        write_status(tmp_path, stat="running")
    except TypeError:
        pass
    else:
        raise AssertionError("a misspelt field must fail")


def test_adopted_status_is_written_with_its_keys_only(tmp_path):
    write_new_status(tmp_path, Status(run="a", state="completed", attempt=1, adopted_from="/x", finished_at="t"))
    assert set(json.loads((tmp_path / "status.json").read_text())) == {
        "run", "state", "attempt", "adopted_from", "finished_at"}


def test_summary_round_trip(tmp_path):
    raw = {"run": "r", "steps": 4, "final_val_loss": None, "checkpoints": ["epoch_0"],
           "packing": {"packed": False, "examples": 3}, "step_cost": {"points": [
               {"batch": 1, "tokens": 10.0, "seconds": 0.1, "peak_gib": None}], "per_token_s": 0.01},
           "stages": [{"name": "a", "index": 0, "dataset": "d", "optimizer": "fresh", "epochs": [0],
                       "first_step": 0, "last_step": 4, "examples": 3, "final_loss": 1.0, "duration_s": 2.0}],
           "someday": 1}
    (tmp_path / "summary.json").write_text(json.dumps(raw))
    s = read_summary(tmp_path)
    assert s is not None and s.steps == 4 and s.packing and s.packing.examples == 3
    assert s.step_cost and s.step_cost.points[0].tokens == 10.0 and s.stages and s.stages[0].name == "a"
    out = s.to_json()
    assert out["stages"] == raw["stages"] and out["someday"] == 1 and "adopted_from" not in out
    write_summary(tmp_path, Summary(steps=2, final_loss=None), keys=["steps", "final_loss"])
    assert json.loads((tmp_path / "summary.json").read_text()) == {"steps": 2, "final_loss": None}
    assert read_summary(tmp_path / "missing") is None


def test_metric_rows(tmp_path):
    for i, t in enumerate((0.0, 1.0, 2.0, 3.0)):
        append_metric(tmp_path, MetricRow(step=i + 1, loss=1.0, tokens=100 * (i + 1), train_time_s=t))
    append_metric(tmp_path, MetricRow(step=4, val_loss=0.5, stage="s1"))
    rows = read_metrics(tmp_path)
    assert [r.is_validation for r in rows] == [False] * 4 + [True]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert "stage" not in json.loads(lines[0]) and json.loads(lines[-1])["stage"] == "s1"
    assert steady_tokens_per_s(rows) == 100.0


def test_stage_records(tmp_path):
    from tunelab.rundir.checkpoints import Counters

    rec = StageRecord(name="a", index=0, dataset="d", optimizer="fresh", epochs=[0], first_step=0, last_step=2,
                      examples=3, counters=Counters(tokens=5))
    write_stage_records(tmp_path, [rec])
    back = read_stage_records(tmp_path)
    assert back == [rec] and back[0].counters == Counters(tokens=5)
    assert "counters" not in back[0].without_counters()
