"""Resume's one owner (train/resume.py) on run directories laid out by hand as a kill leaves them, and the
status.json writer the job holds (rundir/status.py StatusWriter). No training here."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.fsutil import read_json, read_jsonl
from tunelab.rundir.checkpoints import Counters, complete_epochs
from tunelab.rundir.layout import COUNTERS_FILE
from tunelab.rundir.metrics import MetricRow
from tunelab.rundir.order import OrderRecord
from tunelab.rundir.status import StatusWriter
from tunelab.train.context import HeldFiles, StageContext
from tunelab.train.resume import resume


def _ckpt(state_dir: Path, step: int, epoch: float, tokens: int | None) -> Path:
    """A trainer checkpoint of an 80-step run (40 steps an epoch); tokens=None: its save was killed."""
    d = state_dir / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text(json.dumps({"epoch": epoch, "global_step": step, "max_steps": 80}))
    (d / "adapter_model.safetensors").write_text("x")
    (d / "adapter_config.json").write_text("{}")
    if tokens is not None:
        (d / COUNTERS_FILE).write_text(json.dumps({"tokens": tokens}))
    return d


def _lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_restart_resumes_from_the_newest_complete_checkpoint_and_rewinds_the_files(tmp_path):
    state = tmp_path / "trainer_state"
    _ckpt(state, 40, 1.0, tokens=4000)  # epoch 0 ended here, but the kill came before epoch_0 was published
    _ckpt(state, 60, 1.5, tokens=None)  # a mid-epoch save killed before its counters: never resumed from
    _lines(tmp_path / "metrics.jsonl", [{"step": s, "loss": 1.0} for s in (10, 20, 30, 40, 50, 60)])
    _lines(tmp_path / "data_order.jsonl", [{"epoch": 0, "sha256": "a"}, {"epoch": 1, "sha256": "b"}])
    (tmp_path / "status.json").write_text(json.dumps({"restarts": 1, "first_started_at": "2026-01-01T00:00:00"}))

    start = resume(tmp_path, StageContext(), main=True, held=HeldFiles.of(tmp_path))

    assert start.checkpoint == state / "checkpoint-40" and start.step == 40
    assert start.counters == Counters(tokens=4000)
    assert complete_epochs(tmp_path) == [0]  # republished from checkpoint-40
    assert [r.step for r in start.metrics] == [10, 20, 30, 40]  # what the job holds is what the file keeps
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [10, 20, 30, 40]
    assert [r.epoch for r in start.orders] == [0, 1]  # a resumed epoch keeps its order (drawn again, deduped)
    assert (start.restarts, start.first_started_at) == (2, "2026-01-01T00:00:00")


def test_a_later_stage_starting_afresh_keeps_what_the_stages_before_logged(tmp_path):
    _lines(tmp_path / "metrics.jsonl", [{"step": s, "loss": 1.0} for s in (40, 80, 90)])  # 90: stage 2, lost
    _lines(tmp_path / "data_order.jsonl", [{"epoch": e, "sha256": str(e)} for e in (0, 1, 2)])
    (tmp_path / "status.json").write_text(json.dumps({"restarts": 3}))
    ctx = StageContext(name="hard", index=1, count=2, step_offset=80, epoch_offset=2, counters=Counters(tokens=9))

    start = resume(tmp_path, ctx, main=True, held=HeldFiles.of(tmp_path))

    assert start.checkpoint is None and start.step == 0 and start.counters == Counters(tokens=9)
    assert [r.step for r in start.metrics] == [40, 80]
    assert [r["epoch"] for r in read_jsonl(tmp_path / "data_order.jsonl")] == [0, 1]  # stage 2's partial epoch goes
    assert start.restarts == 3  # a stage's fresh start is no restart; the run's count carries on



def test_a_later_stage_of_the_same_job_starts_from_the_rows_the_job_holds(tmp_path):
    held = HeldFiles.of(tmp_path)
    held.metrics = [MetricRow(step=s, loss=1.0) for s in (40, 80)]  # what stage 1 of this job wrote
    held.orders = [OrderRecord(epoch=0), OrderRecord(epoch=1)]
    ctx = StageContext(name="hard", index=1, count=2, step_offset=80, epoch_offset=2)
    start = resume(tmp_path, ctx, main=True, held=held)  # no metrics.jsonl here: a read would find no rows
    assert [r.step for r in start.metrics] == [40, 80] and [r.epoch for r in start.orders] == [0, 1]
    assert start.metrics is held.metrics and start.orders is held.orders  # the writers append to the job's lists
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing dropped: nothing rewritten


def test_a_first_start_drops_an_earlier_starts_results(tmp_path):
    for name in ("metrics.jsonl", "summary.json", "packing.json", "data_order.jsonl"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "status.json").write_text(json.dumps({"restarts": 2}))
    start = resume(tmp_path, StageContext(), main=True, held=HeldFiles.of(tmp_path))
    assert (start.checkpoint, start.metrics, start.orders, start.restarts) == (None, [], [], 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_the_status_writer_reads_the_file_once_and_never_reads_back(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"run": "r", "restarts": 2, "someone_elses": 1}))
    status = StatusWriter(tmp_path)
    status.write(step=3)
    assert {k: read_json(tmp_path / "status.json")[k] for k in ("run", "restarts", "someone_elses", "step")} == \
        {"run": "r", "restarts": 2, "someone_elses": 1, "step": 3}
    (tmp_path / "status.json").unlink()  # gone behind its back: the writer holds what it wrote, it does not re-read
    status.write(step=4)
    assert read_json(tmp_path / "status.json")["restarts"] == 2 and status.status.step == 4
