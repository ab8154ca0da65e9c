"""How many cores a process may use (tunelab/host/cores.py, host/cgroup.py): the smallest of the executor's share or
the affinity mask, a cgroup CPU quota (a real one, made here) and Slurm's allocation, the limit that set it named;
shares of jobs side by side cut along physical cores (a fake sysfs with SMT siblings, split by hand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.host.cgroup import cpu_quota
from tunelab.host.cores import (
    CPUS_ENV,
    Limit,
    cpu_list,
    job_shares,
    parse_cpus,
    physical_cores,
    split_cores,
    usable_cores,
    usable_cpus,
)

IN_SUBPROCESS = """
import json, sys
sys.stdin.readline()  # moved into the cgroup by the test before it answers
from tunelab.host import cores, threads
got = cores.usable_cores()
print(json.dumps({"count": got.count, "limit": got.limit, "source": got.source,
                  "torch": threads.decide(1).torch, "shares": cores.job_shares(2)}))
"""


def _quota_parent() -> tuple[Path, str]:
    """Where a child cgroup with a CPU quota can be made on this machine, and its version (skip where none can)."""
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").is_file() and "cpu" in (v2 / "cgroup.controllers").read_text().split():
        control = v2 / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            try:
                control.write_text("+cpu")
            except OSError as exc:
                pytest.skip(f"cgroup v2 here, but its cpu controller cannot be enabled for children: {exc}")
        return v2, "v2"
    for name in ("cpu", "cpu,cpuacct"):
        v1 = v2 / name
        if (v1 / "cpu.cfs_quota_us").is_file():
            return v1, "v1"
    pytest.skip("no cgroup cpu controller mounted at /sys/fs/cgroup (v2 cpu.max or v1 cpu.cfs_quota_us)")


@pytest.mark.parametrize("quota_us, cpus", [(100000, "1"), (150000, "1.5")])
def test_a_real_cgroup_quota_limits_the_cores_of_a_process_in_it(quota_us, cpus):
    """A child cgroup granting 1 (or 1.5) CPUs' worth of time each 100 ms; a process moved into it counts 1 core
    (1.5 rounds down) whatever its mask, names the quota, runs 1 thread, and gives jobs side by side one share of
    one CPU (the mask's first); the cgroup is removed afterwards."""
    parent, version = _quota_parent()
    group = parent / f"tunelab-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup under {parent} ({exc}): the test needs root")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in (CPUS_ENV, "OMP_NUM_THREADS", "TUNELAB_OMP_NUM_THREADS")}
    proc = None
    try:
        if version == "v2":
            file, text = group / "cpu.max", f"{quota_us} 100000"
            file.write_text(text)
        else:
            (group / "cpu.cfs_period_us").write_text("100000")
            file, text = group / "cpu.cfs_quota_us", f"{quota_us} / cpu.cfs_period_us 100000"
            file.write_text(str(quota_us))
        proc = subprocess.Popen([sys.executable, "-c", IN_SUBPROCESS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        (group / "cgroup.procs").write_text(str(proc.pid))
        out, err = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0, err
        got = json.loads(out)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        _remove(group)
    assert got == {"count": 1, "limit": "cgroup", "source": f"cgroup quota {cpus} CPUs ({file}: {text})",
                   "torch": 1, "shares": [[min(os.sched_getaffinity(0))]]}
    assert not group.exists()


def _remove(group: Path) -> None:
    """rmdir the test's cgroup once its process has left it (the kernel frees it just after the exit)."""
    for _ in range(100):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY: the exited process not yet gone from it
            time.sleep(0.05)
    group.rmdir()


def _fake_proc(tmp_path: Path, cgroup: str, mount_line: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("22 1 0:21 / /proc rw - proc proc rw\n" + mount_line)
    return proc


def test_a_v2_quota_is_the_smallest_over_the_cgroup_and_its_ancestors(tmp_path):
    mount = tmp_path / "cg"
    (mount / "jobs" / "job7").mkdir(parents=True)
    (mount / "jobs" / "cpu.max").write_text("200000 100000\n")  # 2 CPUs for all jobs
    (mount / "jobs" / "job7" / "cpu.max").write_text("max 100000\n")  # none of its own
    proc = _fake_proc(tmp_path, "0::/jobs/job7\n", f"30 23 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw\n")
    quota = cpu_quota(proc)
    assert quota is not None and (quota.cpus, quota.file) == (2.0, mount / "jobs" / "cpu.max")
    got = usable_cores({}, proc=proc)
    assert (got.count, got.limit) == ((2, Limit.CGROUP) if len(usable_cpus()) >= 2 else (1, Limit.AFFINITY))


def test_a_containers_mount_shows_its_own_cgroup_and_half_a_cpu_is_one_core(tmp_path):
    """Docker on v1 without a cgroup namespace: /proc/self/cgroup names /docker/abc, the mount shows that cgroup as
    its root, so the quota is the mount's own file; 0.5 CPUs rounds to at least 1 core."""
    mount = tmp_path / "cpu,cpuacct"
    mount.mkdir()
    (mount / "cpu.cfs_quota_us").write_text("50000\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    proc = _fake_proc(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
                      f"32 31 0:29 /docker/abc {mount} rw - cgroup cgroup rw,cpu,cpuacct\n")
    got = usable_cores({}, proc=proc)
    assert (got.count, got.limit) == (1, Limit.CGROUP)
    assert got.source == f"cgroup quota 0.5 CPUs ({mount / 'cpu.cfs_quota_us'}: 50000 / cpu.cfs_period_us 100000)"
    (mount / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cpu_quota(proc) is None and usable_cores({}, proc=proc).limit == Limit.AFFINITY


def test_the_smallest_of_share_slurm_and_mask_is_used_and_named(tmp_path):
    mask, none = usable_cpus(), tmp_path  # `none`: no cgroup files, no quota
    assert mask == sorted(os.sched_getaffinity(0))
    n = len(mask)
    got = usable_cores({}, proc=none)
    assert (got.count, got.limit, got.source) == (n, Limit.AFFINITY, f"cpu affinity {n}")
    got = usable_cores({CPUS_ENV: cpu_list(mask[:1]), "SLURM_CPUS_PER_TASK": str(n + 8)}, proc=none)
    assert (got.count, got.limit) == (1, Limit.SHARE)
    assert usable_cores({"SLURM_CPUS_PER_TASK": "1", "SLURM_CPUS_ON_NODE": str(n)}, proc=none).source == \
        "SLURM_CPUS_PER_TASK=1"
    got = usable_cores({"SLURM_CPUS_ON_NODE": "1"}, proc=none)
    assert (got.count, got.limit, got.source) == (1, Limit.SLURM, "SLURM_CPUS_ON_NODE=1")
    # an allocation above the mask (a variable leaked from elsewhere) never raises the count
    got = usable_cores({"SLURM_CPUS_PER_TASK": str(n + 8)}, proc=none)
    assert (got.count, got.limit) == (n, Limit.AFFINITY)
    # a share beyond the mask counts only the CPUs it may run on; one naming none of them is refused
    assert usable_cores({CPUS_ENV: f"{mask[0]},{max(mask) + 1000}"}, proc=none).count == 1
    with pytest.raises(TunelabError, match=rf"{CPUS_ENV}: {max(mask) + 1000} names none of the CPUs"):
        usable_cores({CPUS_ENV: str(max(mask) + 1000)}, proc=none)
    with pytest.raises(TunelabError, match=rf"{CPUS_ENV}: 'a-b' is not a list of CPUs"):
        usable_cores({CPUS_ENV: "a-b"}, proc=none)
    assert parse_cpus("0,2-3") == [0, 2, 3]


def _fake_sysfs(tmp_path: Path, siblings: list[list[int]]) -> Path:
    """cpuN/topology/thread_siblings_list for each group of SMT siblings."""
    root = tmp_path / "sys_cpu"
    for group in siblings:
        for cpu in group:
            top = root / f"cpu{cpu}" / "topology"
            top.mkdir(parents=True)
            top.joinpath("thread_siblings_list").write_text(cpu_list(group) + "\n")
    return root


def test_shares_are_cut_along_physical_cores_on_the_usual_smt_layout(tmp_path):
    """8 logical CPUs on 4 cores, core k's threads k and k+4 (Linux's usual numbering): contiguous ids would give
    one job 0-3 and the other 4-7, the second threads of the same four cores."""
    sysfs = _fake_sysfs(tmp_path, [[0, 4], [1, 5], [2, 6], [3, 7]])
    cpus = list(range(8))
    assert physical_cores(cpus, sysfs) == 4 and physical_cores([0, 4, 1], sysfs) == 2
    assert split_cores(cpus, 2, sysfs) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert split_cores(cpus, 3, sysfs) == [[0, 1, 4, 5], [2, 6], [3, 7]]
    assert split_cores([0, 1, 4], 2, sysfs) == [[0, 4], [1]]
    assert split_cores(cpus, 1, sysfs) == [cpus]
    # more jobs than physical cores: the siblings are split too, a core's two threads side by side
    assert split_cores(cpus, 6, sysfs) == [[0, 4], [1, 5], [2], [6], [3], [7]]
    assert split_cores([0, 1], 4, sysfs) == [[0], [1]]  # never an empty share


def test_this_machines_mask_counted_in_physical_cores_of_a_fake_topology(tmp_path):
    """The real mask, its CPUs paired as SMT siblings in a fake sysfs: half the cores (rounded up) for threads."""
    mask = usable_cpus()
    pairs = [mask[i:i + 2] for i in range(0, len(mask), 2)]
    sysfs, none = _fake_sysfs(tmp_path, pairs), tmp_path
    got = usable_cores({}, physical=True, sysfs=sysfs, proc=none)
    physical = len(pairs)
    assert got.count == physical
    assert got.source == f"cpu affinity {len(mask)}" + (f" ({physical} physical cores)" if physical != len(mask) else "")
    assert job_shares(len(pairs), {}, sysfs, none) == pairs
