"""One name per memory counter: what the probe and the job record for a host peak is the same kind, and files
written with the probe's old name (cpu_max_rss) read as it."""

from __future__ import annotations

import json
import sqlite3

from tunelab.ledger import history
from tunelab.rundir.memory import MemoryKind, memory_labels
from tunelab.rundir.probe import read_probe_results, write_probe_results
from tunelab.rundir.summary import Summary
from tunelab.train.metrics import peak_memory
from tunelab.train.probe_steps import _result
from tunelab.train.step_cost import TimedSteps


def test_the_probe_and_the_job_record_a_cpu_peak_as_the_same_kind():
    probe = _result(2, TimedSteps({2: [(0.5, 100.0)]}), None, cuda=False, versions={})
    _, job_kind = peak_memory()  # no GPU in the tests: the process's RSS
    assert probe.memory_kind is MemoryKind.HOST_MAX_RSS and job_kind is MemoryKind.HOST_MAX_RSS
    assert probe.to_json()["memory_kind"] == "host_max_rss"
    assert memory_labels([probe.memory_kind, job_kind]) == "host max RSS"


def test_old_files_with_cpu_max_rss_read_as_host_max_rss(tmp_path):
    probe = _result(2, TimedSteps({2: [(0.5, 100.0)]}), None, cuda=False, versions={}).to_json()
    old = tmp_path / "results.json"
    old.write_text(json.dumps([{"shape": "s", "result": {**probe, "memory_kind": "cpu_max_rss"}}]))
    assert read_probe_results(old)["s"].memory_kind is MemoryKind.HOST_MAX_RSS
    write_probe_results(old, read_probe_results(old).items())
    assert json.loads(old.read_text())[0]["result"]["memory_kind"] == "host_max_rss"
    assert Summary.from_json({"memory_kind": "cpu_max_rss"}).memory_kind is MemoryKind.HOST_MAX_RSS
    assert Summary.from_json({"memory_kind": "cuda_max_reserved"}).to_json()["memory_kind"] == "cuda_max_reserved"


def test_a_history_row_recorded_by_an_old_probe_reads_as_host_max_rss(tmp_path):
    db = tmp_path / "history.db"
    history.record([history.HistoryRun(key="k", source="probe", memory_kind=MemoryKind.HOST_MAX_RSS)], db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT memory_kind FROM history").fetchone() == ("host_max_rss",)
        conn.execute("UPDATE history SET memory_kind = 'cpu_max_rss'")
    assert [r.memory_kind for r in history.load(db, everything=True)] == [MemoryKind.HOST_MAX_RSS]
