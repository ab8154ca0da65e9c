"""Runs side by side on a CPU (forecast/cpu_sharing.py): the choice from injected per-thread-count estimates, with
makespans worked out by hand for the executor's policy (longest first onto the earliest free slot)."""

from dataclasses import replace
from pathlib import Path

import pytest

from tunelab.forecast.cpu_sharing import MIN_GAIN, CpuSharing, capped_line, choose, share_rule, share_threads
from tunelab.host.cores import CPUS_ENV, job_shares, usable_cpus
from tunelab.host.threads import MARK_ENV
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate
from tunelab.spec.resources import ResourcesSpec

FOUR_CORES = {1: 4, 2: 2, 4: 1}  # runs at once -> threads each, on a 4-core machine


def _runs(n: int, **resources) -> list[RunConfig]:
    return [RunConfig.model_construct(name=f"r{i}", kind="finetune", experiment_dir=str(Path("/x")), estimate=None,
                                      resources=ResourcesSpec(**resources)) for i in range(n)]


def _at(seconds_by_threads: dict[int, list[float]], peak_gib: float | None = None, asked: list[int] | None = None):
    def estimate_at(threads: int) -> dict[str, RunEstimate]:
        if asked is not None:
            asked.append(threads)
        return {f"r{i}": RunEstimate(run=f"r{i}", seconds=s, peak_memory_gib=peak_gib)
                for i, s in enumerate(seconds_by_threads[threads])}
    return estimate_at


def test_small_runs_that_barely_speed_up_with_threads_share_the_cpu():
    # four runs; a thread count of 4 makes them 10, 10, 30, 30 s; 2 threads 12, 12, 36, 36; 1 thread 14, 14, 40, 40
    at = _at({4: [10, 10, 30, 30], 2: [12, 12, 36, 36], 1: [14, 14, 40, 40]})
    sharing, estimates = choose(_runs(4), ResourcesSpec(), at, 4, 64.0, FOUR_CORES.__getitem__)
    # one at a time: 80 s; two at once: 36+12 | 36+12 = 48 s; four at once: the longest, 40 s (<= 0.9 x 80)
    assert [(o.runs_at_once, o.threads_each, o.makespan_s) for o in sharing.options] == [
        (1, 4, 80.0), (2, 2, 48.0), (4, 1, 40.0)]
    assert (sharing.chosen.runs_at_once, sharing.chosen.threads_each) == (4, 1)
    assert [e.seconds for e in estimates.values()] == [14, 14, 40, 40]  # the estimates the runs get: 1 thread's
    assert sharing.line().startswith("CPU: 4 runs side by side, 1 thread each (auto: the shortest predicted makespan")


def test_runs_whose_threads_scale_stay_one_at_a_time():
    # each halving of the threads doubles the time: sharing gains nothing
    at = _at({4: [10, 10, 30, 30], 2: [20, 20, 60, 60], 1: [40, 40, 120, 120]})
    sharing, _ = choose(_runs(4), ResourcesSpec(), at, 4, 64.0, FOUR_CORES.__getitem__)
    assert [o.makespan_s for o in sharing.options] == [80.0, 80.0, 120.0]
    assert sharing.chosen.runs_at_once == 1 and sharing.why == f"auto: sharing gains under {MIN_GAIN:.0%}"


def test_a_gain_below_the_margin_is_not_taken():
    # two at once: 2 runs of 9.5 s side by side against 10 s in a row (a 5 % gain, within a timing's spread)
    at = _at({4: [5, 5], 2: [9.5, 9.5]})
    sharing, _ = choose(_runs(2), ResourcesSpec(), at, 4, 64.0, FOUR_CORES.__getitem__)
    assert [o.makespan_s for o in sharing.options] == [10.0, 9.5] and sharing.chosen.runs_at_once == 1


def test_host_ram_limits_the_runs_side_by_side():
    # 6 GiB a run, 16 GiB of RAM: two fit (12 <= 0.9 x 16 = 14.4), four do not
    at = _at({4: [10, 10, 30, 30], 2: [12, 12, 36, 36], 1: [14, 14, 40, 40]}, peak_gib=6.0)
    sharing, _ = choose(_runs(4), ResourcesSpec(), at, 4, 16.0, FOUR_CORES.__getitem__)
    assert [o.runs_at_once for o in sharing.options] == [1, 2] and sharing.chosen.runs_at_once == 2


def test_a_number_set_in_the_spec_is_kept_and_priced_at_its_share():
    asked: list[int] = []
    at = _at({4: [10, 10, 30, 30], 2: [12, 12, 36, 36], 1: [14, 14, 40, 40]}, asked=asked)
    sharing, estimates = choose(_runs(4), ResourcesSpec(cpu_runs_at_once=2), at, 4, 64.0, FOUR_CORES.__getitem__)
    assert asked == [2] and sharing.options == () and sharing.why == "set by resources.cpu_runs_at_once"
    assert (sharing.chosen.runs_at_once, sharing.chosen.makespan_s) == (2, 48.0)


def test_multi_process_runs_one_run_and_one_core_train_one_at_a_time():
    cases = [(_runs(2, nproc_per_run=2), 4, "auto: runs of several processes"), (_runs(1), 4, "auto: one run"),
             (_runs(2), 1, "auto: one core")]
    for runs, cores, why in cases:
        sharing, _ = choose(runs, ResourcesSpec(), _at({4: [10] * len(runs)}), cores, 64.0, FOUR_CORES.__getitem__)
        assert isinstance(sharing, CpuSharing) and sharing.chosen.runs_at_once == 1 and sharing.why == why


def test_runs_without_a_time_estimate_stay_one_at_a_time_and_say_why():
    at = _at({4: [None, 10], 2: [None, 12], 1: [None, 14]})
    sharing, _ = choose(_runs(2), ResourcesSpec(), at, 4, 64.0, FOUR_CORES.__getitem__)
    assert sharing.chosen.runs_at_once == 1 and "no time estimate" in sharing.why


def test_a_slots_later_runs_are_priced_warm():
    """warm_s (the stack's import a lane's later job skips: forecast/jobstart.warm_start_s), never more than a run's
    own start-up: the first example's options again, each run with a 3 s start-up inside and a 2 s import."""
    def at(threads: int) -> dict[str, RunEstimate]:
        seconds = {4: [10, 10, 30, 30], 2: [12, 12, 36, 36], 1: [14, 14, 40, 40]}[threads]
        return {f"r{i}": RunEstimate(run=f"r{i}", seconds=s, startup_s=3.0) for i, s in enumerate(seconds)}

    sharing, _ = choose(_runs(4), ResourcesSpec(), at, 4, 64.0, FOUR_CORES.__getitem__, warm_s=2.0)
    # one at a time: 30 + 28 + 8 + 8 = 74 s; two at once: 36 + 10 | 36 + 10 = 46 s; four at once: every slot's first
    assert [o.makespan_s for o in sharing.options] == [74.0, 46.0, 40.0]
    capped, _ = choose(_runs(4), ResourcesSpec(), at, 4, 64.0, FOUR_CORES.__getitem__, warm_s=9.0)
    assert [o.makespan_s for o in capped.options] == [71.0, 45.0, 40.0]  # 9 s capped at each run's 3 s start-up


def test_the_users_thread_count_above_a_share_is_priced_capped_and_said(monkeypatch):
    """OMP_NUM_THREADS set for the whole machine before tunelab: the plan prices a side-by-side run at its share's
    CPUs, as its job will run (host/threads.py), not at the user's count (it did, and the jobs then ran two threads
    pinned to one CPU: 19× slower), and plan.md's line says so."""
    cpus = usable_cpus()
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs: two runs side by side")
    monkeypatch.setenv("OMP_NUM_THREADS", str(len(cpus)))
    monkeypatch.delenv(MARK_ENV, raising=False)
    monkeypatch.delenv(CPUS_ENV, raising=False)
    share = min(job_shares(2), key=len)
    assert 1 <= share_threads(2) <= len(share) < len(cpus)  # its share's CPUs (fewer where others hold some now)
    at = _at({4: [10, 10, 30, 30], 2: [12, 12, 36, 36], 1: [14, 14, 40, 40]})
    sharing, _ = choose(_runs(4), ResourcesSpec(), at, 4, 64.0, FOUR_CORES.__getitem__)
    rule = share_rule(2)
    assert (rule.capped_from, rule.torch) == (len(cpus), len(share))  # the user's count, capped at the share's CPUs
    line = replace(sharing, capped=capped_line(rule, sharing.chosen.threads_each)).line()
    assert line.endswith(f"; OMP_NUM_THREADS={len(cpus)}, set before tunelab, is more than a run's share of the "
                         "CPUs: each run trains with 1, capped (more threads than CPUs wait for one another))")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # fits a share: respected, nothing said
    assert share_rule(2).capped_from is None and capped_line(share_rule(2), 1) == ""
    monkeypatch.setenv("OMP_NUM_THREADS", str(len(cpus)))
    assert share_rule(1).capped_from is None  # alone, the whole machine's CPUs hold it
