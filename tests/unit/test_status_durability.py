"""status.json: a progress update (step, epoch) is replaced atomically without an fsync; any other change is
made durable. The training job rewrites progress at every logged step, where an fsync cost 2 % of a tiny run."""

from __future__ import annotations

import json
import os

from tunelab.rundir.status import StatusWriter, read_status


def _fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_progress_is_not_fsynced_and_a_state_change_is(tmp_path, monkeypatch):
    calls = _fsyncs(monkeypatch)
    writer = StatusWriter(tmp_path)
    writer.write(state="running", attempt=1)
    after_state = len(calls)
    assert after_state >= 1
    for step in range(1, 6):
        writer.write(step=step, epoch=step / 5, total_steps=5)
    assert len(calls) == after_state  # five progress writes, no fsync
    assert read_status(tmp_path).step == 5  # yet each one replaced the file
    writer.write(state="completed", step=5)
    assert len(calls) > after_state
    data = json.loads((tmp_path / "status.json").read_text())
    assert (data["state"], data["step"], data["total_steps"]) == ("completed", 5, 5)
