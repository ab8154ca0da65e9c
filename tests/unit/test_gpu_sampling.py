"""GPU sampling: absent cleanly without NVML (this machine, for real); with NVML (a stand-in object for the
driver API, which cannot run without a GPU) the job's GPUs as CUDA_VISIBLE_DEVICES names them are sampled;
the report's mean and min–max utilization and its flag below 50 %."""

import json
import time
from types import SimpleNamespace

import pytest

from tunelab.report.gpu_use import gpu_section
from tunelab.rundir.gpu import utilization
from tunelab.rundir.layout import SAMPLES_FILE
from tunelab.train import gpu_sampling
from tunelab.train.gpu_sampling import GpuSampler


def test_without_nvml_nothing_is_written_and_nothing_fails(tmp_path):
    if gpu_sampling._nvml() is not None:
        pytest.skip("NVML works here: this test is for machines without it")
    with GpuSampler(tmp_path, interval_s=0.01):
        time.sleep(0.05)
    assert not (tmp_path / SAMPLES_FILE).exists()
    assert utilization(tmp_path) is None


class _FakeNvml:
    """The few NVML calls the sampler makes, for two physical GPUs named 2 and GPU-abc."""

    def __init__(self):
        self.util = {"h2": 90, "habc": 30}

    def nvmlDeviceGetCount(self):
        return 4

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"h{i}"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return "habc" if uuid == "GPU-abc" else (_ for _ in ()).throw(ValueError(uuid))

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.util[h])

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=3 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        return 250_000  # mW


def test_samples_the_gpus_the_job_was_given(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_sampling, "_nvml", lambda: _FakeNvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-abc")
    samples = tmp_path / SAMPLES_FILE
    with GpuSampler(tmp_path, interval_s=0.02):
        # until a whole sample (a line per GPU) is written; the guard only keeps a broken sampler from hanging
        end = time.monotonic() + 60
        while not (samples.is_file() and samples.read_text().count("\n") >= 2):
            assert time.monotonic() < end, "the sampler wrote no sample of both GPUs within 60 s"
            time.sleep(0.02)
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert rows and {r["gpu"] for r in rows} == {"2", "GPU-abc"}
    assert all(r["mem_used_gib"] == 3.0 and r["power_w"] == 250.0 for r in rows)
    assert {r["util_pct"] for r in rows if r["gpu"] == "2"} == {90.0}
    u = utilization(tmp_path)
    assert (u.min_pct, u.max_pct, u.mean_power_w) == (30.0, 90.0, 250.0)


def _write(run_dir, utils):
    run_dir.mkdir(parents=True)
    (run_dir / SAMPLES_FILE).write_text("".join(
        json.dumps({"time": float(i), "gpu": "0", "util_pct": u, "mem_used_gib": 10.0 + i, "power_w": None}) + "\n"
        for i, u in enumerate(utils)))


def test_report_shows_mean_and_range_and_flags_runs_below_half(tmp_path):
    _write(tmp_path / "busy", [80, 100, 90, 70])
    _write(tmp_path / "idle", [10, 60, 20, 30])
    (tmp_path / "cpu").mkdir()
    data = SimpleNamespace(runs=[SimpleNamespace(name=n, run_dir=tmp_path / n) for n in ("busy", "idle", "cpu")])
    busy = utilization(tmp_path / "busy")
    assert (busy.samples, busy.mean_pct, busy.min_pct, busy.max_pct, busy.max_mem_used_gib) == (4, 85.0, 70, 100, 13.0)
    section = gpu_section(data)
    table = section.blocks[0]
    assert [r[0] for r in table.rows] == ["busy", "idle"]  # a run without samples has no row
    assert table.rows[0][2:4] == ["85 %", "70–100 %"] and table.rows[0][-1] == "ok"
    assert table.rows[1][2:4] == ["30 %", "10–60 %"] and "below 50 %" in table.rows[1][-1]
    assert "idle (30 %)" in section.blocks[1].text
    assert gpu_section(SimpleNamespace(runs=[data.runs[2]])) is None  # nothing sampled: no section


def test_the_peers_benchmark_reads_the_same_gpus_the_sampler_samples(monkeypatch):
    """benchmarks/peerlib/measure.GpuMemory takes its reading through visible_gpus(): the GPUs CUDA_VISIBLE_DEVICES
    names, their used memory summed (3 GiB each here); none without NVML."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from peerlib.measure import GpuMemory

    monkeypatch.setattr(gpu_sampling, "_nvml", lambda: _FakeNvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-abc")
    assert GpuMemory().used_mib() == 2 * 3 * 1024
    monkeypatch.setattr(gpu_sampling, "_nvml", lambda: None)
    assert GpuMemory().used_mib() is None
