"""status.json's progress is rewritten at most once a second by the training callback (and always at the last step),
while metrics.jsonl keeps every logged step: the per-step bookkeeping of a small model's fast steps (issue 66 item 3).
The real callback, MetricsWriter and StatusWriter on a run directory; the trainer's state and logs injected."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tunelab.rundir.checkpoints import Counters
from tunelab.rundir.status import StatusWriter
from tunelab.train import loop_hooks
from tunelab.train.metrics import LocalCounts, MetricsWriter


def _log(callback, step: int, max_steps: int = 10) -> None:
    state = SimpleNamespace(global_step=step, max_steps=max_steps, epoch=step / max_steps)
    callback.on_log(None, state, None, logs={"loss": 1.0 / step, "learning_rate": 1e-3})


def test_progress_is_written_once_a_second_and_at_the_last_step(tmp_path):
    writer = MetricsWriter(tmp_path, Counters())
    callback = loop_hooks.make_callback(tmp_path, writer, StatusWriter(tmp_path), {}, LocalCounts())
    for step in range(1, 10):  # nine steps well inside one second: the first one's progress stands
        _log(callback, step)
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["step"], status["total_steps"]) == (1, 10)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(range(1, 10))
    callback.progress_at -= loop_hooks.PROGRESS_EVERY_S  # a second later, as far as the callback can tell
    _log(callback, 9)
    assert json.loads((tmp_path / "status.json").read_text())["step"] == 9
    _log(callback, 10)  # the last step is written however soon it comes
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["step"], status["epoch"]) == (10, 1.0)


def test_a_step_slower_than_the_interval_writes_every_time(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_hooks, "PROGRESS_EVERY_S", 0.0)  # every step is a second apart, in effect
    callback = loop_hooks.make_callback(tmp_path, MetricsWriter(tmp_path, Counters()), StatusWriter(tmp_path), {},
                                        LocalCounts())
    for step in (1, 2, 3):
        _log(callback, step)
        assert json.loads((tmp_path / "status.json").read_text())["step"] == step
