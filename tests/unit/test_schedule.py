"""The GPU scheduler over fake device lists: longest run first, N GPUs for an N-process run, sharing only
when the predicted peaks fit, CUDA_VISIBLE_DEVICES respected; makespans worked out by hand."""

import pytest

from tunelab.execute.schedule import Device, Pool, RunNeed, forecast, lpt_order, visible_gpus
from tunelab.fsutil import human_seconds

H100 = 80.0


def _gpus(n: int, first: int = 0) -> list[Device]:
    return [Device(str(i), H100) for i in range(first, first + n)]


def _where(schedule) -> dict:
    return {p.run: (p.devices, p.start_s, p.end_s) for p in schedule.placements}


def test_longest_first_shortens_the_makespan():
    # the classic case: 7, 6, 5, 4, 3 (given shortest first) on 2 GPUs
    lpt = forecast(_gpus(2), [RunNeed(n, 1, float(s)) for n, s in [("e", 3), ("d", 4), ("c", 5), ("b", 6), ("a", 7)]])
    # a:0-7 on GPU0, b:0-6 on GPU1, c:6-11 on GPU1, d:7-11 on GPU0, e:11-14
    assert lpt.makespan_s == 14.0
    w = _where(lpt)
    assert w["a"] == (("0",), 0.0, 7.0) and w["b"] == (("1",), 0.0, 6.0)
    assert w["c"] == (("1",), 6.0, 11.0) and w["d"] == (("0",), 7.0, 11.0) and w["e"][1] == 11.0
    # the same runs in the order given (shortest first) would end at 3+5=8, 4+6=10, then 7 more: 15 or later
    fifo_end = max(3 + 5, 4 + 6) + 7
    assert lpt.makespan_s < fifo_end
    # 3, 3, 2, 2, 2 on 2 GPUs: the 3s at 0, two 2s at 3, the last 2 at 5: ends at 7
    assert forecast(_gpus(2), [RunNeed(f"r{i}", 1, float(t)) for i, t in enumerate((2, 3, 2, 3, 2))]).makespan_s == 7.0


def test_a_run_with_n_processes_gets_n_gpus_of_its_own():
    needs = [RunNeed("big", 4, 10.0), RunNeed("s1", 1, 8.0), RunNeed("s2", 1, 8.0)]
    sched = forecast(_gpus(4), needs)
    w = _where(sched)
    assert w["big"] == (("0", "1", "2", "3"), 0.0, 10.0)  # longest first, on all four
    assert w["s1"][1] == w["s2"][1] == 10.0 and sched.makespan_s == 18.0
    two = forecast(_gpus(4), [RunNeed("a", 2, 5.0), RunNeed("b", 2, 5.0), RunNeed("c", 1, 1.0)])
    wa, wb = _where(two)["a"][0], _where(two)["b"][0]
    assert len(wa) == len(wb) == 2 and not set(wa) & set(wb) and two.makespan_s == 6.0
    assert forecast(_gpus(2), [RunNeed("huge", 8, 1.0)]).unplaceable == ["huge"]


def test_runs_share_a_gpu_only_when_their_predicted_peaks_fit():
    small = [RunNeed(f"s{i}", 1, 10.0, memory_gib=30.0) for i in range(4)]
    shared = forecast(_gpus(2), small, runs_per_gpu=2)  # 30 + 30 <= 0.9 × 80: two per GPU
    assert shared.makespan_s == 10.0 and all(p.start_s == 0.0 for p in shared.placements)
    assert sorted(len([p for p in shared.placements if p.devices == (d,)]) for d in ("0", "1")) == [2, 2]
    assert forecast(_gpus(2), small, runs_per_gpu=1).makespan_s == 20.0  # the default: one run per GPU
    big = [RunNeed(f"b{i}", 1, 10.0, memory_gib=40.0) for i in range(2)]
    assert forecast(_gpus(1), big, runs_per_gpu=2).makespan_s == 20.0  # 80 > 72: they do not share
    unknown = [RunNeed(f"u{i}", 1, 10.0, memory_gib=None) for i in range(2)]
    assert forecast(_gpus(1), unknown, runs_per_gpu=4).makespan_s == 20.0  # memory unknown: never shares
    # a small run never joins a GPU of a multi-GPU run
    pool = Pool(_gpus(2), runs_per_gpu=4)
    assert pool.place(RunNeed("ddp", 2, 1.0, 5.0)) == ("0", "1")
    assert pool.place(RunNeed("tiny", 1, 1.0, 1.0)) is None
    pool.release("ddp")
    assert pool.place(RunNeed("tiny", 1, 1.0, 1.0)) == ("0",)


def test_runs_without_an_estimate_go_last_and_leave_the_makespan_unknown():
    needs = [RunNeed("x", 1, None), RunNeed("y", 1, 5.0), RunNeed("z", 1, 9.0)]
    assert [n.name for n in lpt_order(needs)] == ["z", "y", "x"]
    sched = forecast(_gpus(1), needs)
    assert sched.makespan_s is None and _where(sched)["x"][1] == 14.0


def test_visible_gpus_are_named_as_cuda_visible_devices_names_them(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr("tunelab.catalog.nvidia_driver_present", lambda: True)  # this machine has no driver
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    devs = visible_gpus(memory_gib=[80.0, 80.0])
    assert [d.id for d in devs] == ["2", "3"]
    sched = forecast(devs, [RunNeed("a", 2, 1.0)])
    assert _where(sched)["a"][0] == ("2", "3")  # the job is given CUDA_VISIBLE_DEVICES=2,3, never 0,1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [d.id for d in visible_gpus(memory_gib=[80.0, 80.0])] == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus() == []


@pytest.mark.parametrize("n_gpus", [1, 3, 4])
def test_forecast_never_overcommits_a_gpu(n_gpus):
    needs = [RunNeed(f"r{i}", 1 + i % 2, float(1 + (7 * i) % 5), memory_gib=20.0) for i in range(9)]
    needs = [n for n in needs if n.gpus <= n_gpus]
    sched = forecast(_gpus(n_gpus), needs, runs_per_gpu=2)
    for d in range(n_gpus):
        on = [p for p in sched.placements if str(d) in p.devices]
        for p in on:  # at any start, the runs holding this GPU: at most 2, and a multi-GPU run alone
            live = [q for q in on if q.start_s <= p.start_s < q.end_s]
            assert len(live) <= 2 and (len(live) == 1 or all(len(q.devices) == 1 for q in live))
    assert sorted(p.run for p in sched.placements) == sorted(n.name for n in needs)


def test_plan_shows_where_each_run_goes_and_the_makespan(write_spec, monkeypatch, tmp_path):
    """The schedule plan.md prints is the plan's forecast (forecast/sweeptime.py plan_forecast, issue 54): each run's
    training and evaluation with their job starts, placed longest first — no longer the training alone."""
    from tunelab.catalog import resolve_gpu
    from tunelab.execute import schedule
    from tunelab.plan.markdown import plan_rows, render_plan_md
    from tunelab.plan.planner import make_plan

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    monkeypatch.setattr(schedule, "visible_gpus", lambda: [Device("2", 80.0), Device("3", 80.0)])
    plan = make_plan(write_spec(factors={"lora_rank": [4, 8, 16]}, training={"epochs": 1}, controls=False),
                     gpu=resolve_gpu("H100"))
    f = plan.forecast
    assert f is not None and len(f.runs) == 3
    for r in f.runs:  # each run's parts: its estimate's training (its start-up apart), then its evaluation's
        assert r.train_start_s + r.train_s == pytest.approx(plan.estimates[r.run].seconds, abs=0.1)
        assert r.eval_start_s > 0 and r.eval_s
    t = sorted((r.train_start_s + r.train_s + r.saves_s + r.eval_start_s + r.eval_s for r in f.runs), reverse=True)
    # longest on GPU 2, next on GPU 3, the third after the shorter of those two
    assert f.makespan_s == pytest.approx(max(t[0], t[1] + t[2]), abs=0.5)
    assert {tuple(r.devices) for r in f.runs} == {("2",), ("3",)}
    md = render_plan_md(plan)
    assert "## Schedule (local executor)" in md and "| GPU 2 |" in md
    assert f"**Predicted makespan: {human_seconds(f.makespan_s)} (P10–P90" in md
    assert all(r["where (start)"].startswith("GPU ") for r in plan_rows(plan) if r["type"] == "fine-tuned")
    two = make_plan(write_spec(factors={"lora_rank": [4, 8]}, resources={"gpus_per_run": 2}, controls=False),
                    gpu=resolve_gpu("H100"))
    assert two.forecast is not None and all(r.devices == ["2", "3"] for r in two.forecast.runs)  # both GPUs each
    assert two.forecast.makespan_s == pytest.approx(sum(r.total_s or 0.0 for r in two.forecast.runs), abs=0.5)


def test_no_visible_device_means_no_gpu_without_importing_torch():
    import os
    import subprocess
    import sys

    code = "import sys; from tunelab.catalog import detect_gpu; print(detect_gpu(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}).stdout.split()
    assert out == ["None", "False"]  # planning on a login node does not pay torch's import to learn that


def test_a_later_job_on_a_device_that_ran_one_starts_warm():
    """RunNeed.warm_s (a local CPU lane's later jobs fork from one import): skipped only by a job whose devices all ran
    one before, worked out by hand."""
    cpu = [Device("cpu:0"), Device("cpu:1")]
    needs = [RunNeed(n, 1, 10.0, None, 3.0) for n in "abcd"]
    w = _where(sched := forecast(cpu, needs))
    # a, b at 0 on the two slots (cold: 10 s each), c, d at 10 on the same slots (warm: 7 s each): ends at 17
    assert sorted(w[n][1:] for n in "ab") == [(0.0, 10.0)] * 2 and sorted(w[n][1:] for n in "cd") == [(10.0, 17.0)] * 2
    assert sched.makespan_s == 17.0
    assert forecast([Device("cpu")], needs[:3]).makespan_s == 10.0 + 7.0 + 7.0  # one slot: every job after the first
    assert forecast(cpu, [RunNeed(n, 1, 10.0) for n in "abcd"]).makespan_s == 20.0  # no warm start: as before
    # a two-device job after one-device jobs on only one of its devices starts cold
    two = forecast(_gpus(2), [RunNeed("one", 1, 5.0, None, 3.0), RunNeed("both", 2, 4.0, None, 3.0)])
    assert _where(two)["both"][1:] == (5.0, 9.0)
    # never below nothing: "b" after "a" on one slot, warm_s above its seconds, takes no time, not negative time
    assert _where(forecast([Device("cpu")], [RunNeed("a", 1, 4.0), RunNeed("b", 1, 1.0, None, 5.0)]))["b"] == \
        (("cpu",), 4.0, 4.0)
