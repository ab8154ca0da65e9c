"""The thread rule (tunelab/host/threads.py): every process tunelab starts runs its share of the cores it was given,
a user's OMP_NUM_THREADS wins, and a child tells tunelab's OMP_NUM_THREADS from the user's. The local executor
gives CPU runs side by side disjoint shares, and a job started with one runs pinned to it with its threads."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.host import threads
from tunelab.host.cores import CPUS_ENV, Limit, cpu_list, parse_cpus, physical_cores, usable_cores, usable_cpus
from tunelab.host.threads import MARK_ENV, RULE_ENV, ThreadPlan, decide, thread_budget
from tunelab.rundir.config import RunConfig
from tunelab.spec import ResourcesSpec


@pytest.mark.parametrize("cores, processes, want", [(2, 1, 2), (2, 2, 1), (2, 4, 1), (8, 3, 2), (16, 2, 8),
                                                    (1, 1, 1), (0, 1, 1)])
def test_the_budget_is_the_cores_shared_by_the_processes_at_least_one_each(cores, processes, want):
    assert thread_budget(cores, processes) == want


def test_this_machines_physical_cores_are_what_proc_cpuinfo_says():
    cpus = usable_cpus()
    assert physical_cores(cpus) == cpuinfo_cores(cpus)  # /sys's thread siblings against /proc/cpuinfo's core ids


def cpuinfo_cores(cpus: list[int]) -> int:
    """The physical cores these logical CPUs sit on, read from /proc/cpuinfo (a second source beside the
    /sys topology threads.py reads): distinct (physical id, core id) pairs of their `processor` blocks."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("Linux /proc/cpuinfo")
    pairs = set()
    for block in info.read_text().strip().split("\n\n"):
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
        if int(fields.get("processor", -1)) in cpus:
            if "core id" not in fields:
                pytest.skip("/proc/cpuinfo without core ids (not x86)")
            pairs.add((fields.get("physical id", "0"), fields["core id"]))
    return len(pairs)


def test_a_two_process_job_divides_its_cores_and_its_ranks_decide_the_same():
    k = usable_cores(physical=True).count  # Slurm's allocation no larger than this machine gives (a count it keeps)
    parent: dict[str, str] = {"SLURM_CPUS_PER_TASK": str(k)}
    threads.apply(decide(1, parent), parent)  # the job process alone: all k
    assert (parent["OMP_NUM_THREADS"], parent["MKL_NUM_THREADS"], parent[MARK_ENV]) == (str(k),) * 3
    assert "TOKENIZERS_PARALLELISM" not in parent  # one process: tokenizers may use its threads
    plan = decide(2, parent)  # launching 2 ranks: tunelab's own OMP_NUM_THREADS is divided again
    half = max(1, k // 2)
    assert plan == ThreadPlan(half, k, 2, f"SLURM_CPUS_PER_TASK={k} / 2 process(es)", limit=Limit.SLURM)
    assert not plan.explicit
    threads.apply(plan, parent)
    assert (parent["OMP_NUM_THREADS"], parent["MKL_NUM_THREADS"], parent["TOKENIZERS_PARALLELISM"]) == \
        (str(half), str(half), "false")
    assert decide(2, dict(parent)) == plan  # what each rank decides from the environment it inherited


def test_the_users_omp_num_threads_is_respected_and_said():
    if len(usable_cpus()) < 2:
        pytest.skip("needs 2 CPUs: two processes of one thread each")
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "5", "SLURM_CPUS_PER_TASK": "8"}
    plan = decide(2, env)
    assert plan.torch == 1 and plan.explicit and "OMP_NUM_THREADS=1" in plan.source and "respected" in plan.source
    threads.apply(plan, env)
    # the user's MKL_NUM_THREADS above it is capped: torch would take MKL's 5 for its threads over OMP's 1
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["TOKENIZERS_PARALLELISM"]) == ("1", "1", "false")
    assert MARK_ENV not in env
    below = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    threads.apply(decide(1, below), below)
    assert below["MKL_NUM_THREADS"] == "1"  # a count that fits is left as it is
    # a value the user set after tunelab marked its own is the user's
    assert decide(1, {"OMP_NUM_THREADS": "1", MARK_ENV: "2"}).explicit
    # a value that is no count is the user's too: left to torch as it stands, nothing set or capped
    odd = decide(1, {"OMP_NUM_THREADS": "4,2"})
    assert (odd.torch, odd.explicit, odd.capped_from) == (None, True, None) and "OMP_NUM_THREADS=4,2" in odd.source


@pytest.mark.parametrize("omp, cpus, processes", [(2, 1, 1), (8, None, 1), (4, None, 2), (3, 1, 2)])
def test_the_users_omp_num_threads_past_the_cpus_of_its_share_is_capped_and_marked_tunelabs(omp, cpus, processes):
    """More threads than the CPUs the job's processes may run on only wait for one another: the count is capped at
    the share's CPUs over the processes (at least one each), said, and marked tunelab's so that a child divides it
    again. `cpus`: the share's first CPUs (None: all this process may use)."""
    mine = usable_cpus()
    share = cpu_list(mine[:cpus] if cpus else mine)
    want = max(1, len(parse_cpus(share)) // processes)
    if omp * processes <= len(parse_cpus(share)):
        pytest.skip(f"a machine with {len(mine)} CPUs runs {omp} × {processes} threads on them: nothing to cap")
    env = {"OMP_NUM_THREADS": str(omp), CPUS_ENV: share}
    plan = decide(processes, env)
    assert (plan.torch, plan.capped_from, plan.explicit) == (want, omp, False)
    assert f"OMP_NUM_THREADS={omp}, set before tunelab, capped at {want}" in plan.source and share in plan.source
    threads.apply(plan, env)
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env[MARK_ENV]) == (str(want),) * 3


def test_the_old_behaviour_sets_nothing():
    env = {RULE_ENV: "torch", "SLURM_CPUS_PER_TASK": "8"}
    plan = decide(2, env)
    assert plan.torch is None and plan.source.startswith("torch's default")
    threads.apply(plan, env)
    assert env == {RULE_ENV: "torch", "SLURM_CPUS_PER_TASK": "8"}


def test_a_share_the_process_cannot_take_is_said_in_a_line(monkeypatch, capsys):
    """The kernel refusing the affinity (EINVAL: a CPU gone offline, a cpuset changed under the job): the job runs
    on its whole mask, and its log says so instead of nothing."""
    import errno

    mask = usable_cpus()
    if len(mask) < 2:
        pytest.skip("one CPU: a share of it is the whole mask, nothing to pin")

    def refuse(pid: int, cpus: set[int]) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    threads.pin({CPUS_ENV: str(mask[0])})
    out = capsys.readouterr().out
    assert out == (f"warning: could not pin this job to its cores {CPUS_ENV}={mask[0]} ([Errno 22] Invalid argument): "
                   f"it runs on CPUs {cpu_list(mask)}, which other jobs' shares overlap; its threads are still its "
                   "share's\n")
    assert usable_cpus() == mask


def test_a_share_naming_none_of_the_processs_cpus_is_refused():
    beyond = max(usable_cpus()) + 1000
    with pytest.raises(TunelabError, match=rf"{CPUS_ENV}: {beyond} names none of the CPUs this process may run on"):
        threads.pin({CPUS_ENV: str(beyond)})


def _run(name: str, exp: Path) -> RunConfig:
    """What the executor reads of a run (its name, directory, resources), without planning a sweep."""
    (exp / "runs" / name).mkdir(parents=True)
    return RunConfig.model_construct(name=name, kind="finetune", experiment_dir=str(exp), estimate=None,
                                     resources=ResourcesSpec(cpu_runs_at_once=2))


@pytest.mark.parametrize("users_omp", [False, True])
def test_two_cpu_runs_side_by_side_under_the_local_executor_each_get_their_share(tmp_path, users_omp):
    """resources.cpu_runs_at_once: 2 on a machine without GPUs: two jobs at once, each started by the executor with
    its own share of the cores, pinned to it, its threads that share's. `users_omp`: the user set OMP_NUM_THREADS and
    MKL_NUM_THREADS to the whole machine's CPUs before tunelab (as HPC modules do); each job still runs no more
    threads than its share has CPUs (it ran two threads on one CPU before, a search's trials 19× slower; torch takes
    MKL's count over OMP's, so capping OMP alone left it at two)."""
    from tunelab.execute.local_jobs import Devices, LocalExecutor

    runs = [_run(name, tmp_path) for name in ("a", "b")]
    devices = Devices(runs)
    if devices.on_gpu or len(usable_cpus()) < 2:
        pytest.skip("needs a machine without visible GPUs and with at least 2 cores")
    envs = [devices.take(cfg, 0, i) for i, cfg in enumerate(runs)]
    assert devices.take(_run("c", tmp_path), 0, 2) is None  # two slots only
    shares = [parse_cpus(env[CPUS_ENV]) for env in envs if env]
    assert len(shares) == 2 and not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == usable_cpus()
    code = ("import json, os; from tunelab.host import threads; threads.apply(threads.decide(1)); import torch; "
            "print(json.dumps([sorted(os.sched_getaffinity(0)), torch.get_num_threads()]))")
    ex, ids = LocalExecutor(), []
    for cfg, env in zip(runs, envs):  # a stand-in for job.sh: the job's first lines, then what it got
        script = cfg.run_dir / "job.sh"
        script.write_text(f"exec {sys.executable} -c {code!r} > {cfg.run_dir / 'got.json'}\n")
        users = str(len(usable_cpus())) if users_omp else ""
        ids.append(ex.submit(script, env={**(env or {}), "OMP_NUM_THREADS": users, "MKL_NUM_THREADS": users,
                                          MARK_ENV: ""}))
    for job in ids:
        ex._procs[job].wait(60)
    for cfg, share in zip(runs, shares):
        affinity, torch_threads = json.loads((cfg.run_dir / "got.json").read_text())
        # one process on its share: a thread per physical core of it (as /proc/cpuinfo counts them); the user's
        # count for the machine: a thread per CPU of the share, no more
        assert affinity == share and torch_threads == (len(share) if users_omp else cpuinfo_cores(share))
