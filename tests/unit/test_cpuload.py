"""cpuload: a timed window's load read from the real /proc/stat against a real CPU hog the test starts. The
machine is shared, so nothing here assumes it idle: the hog's own CPU time (from the kernel, via wait4) is the
independent expectation, and others' CPU in the window must hold at least that much. A job's own process tree (its
multiprocessing workers, live or reaped) is the job's, not others': a real job process with a real worker, each
burning what it reports. The rule's arithmetic (the tree, a reaped child in its parent's cutime, the clamp at 0)
is checked on counters the test writes itself: a /proc/stat file and /proc/<pid>/stat files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelab.host.cpuload import LoadMeter, LoadWindow, machine_busy_s, process_cpu_s, scan_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from hogs import hogs  # noqa: E402  (benchmarks/hogs.py: estimate_accuracy.py --contend's hogs)

pytestmark = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux /proc/stat")

HOG = "import time\nend = time.process_time() + float({cpu})\nwhile time.process_time() < end: pass\n"
TICK = 0.02  # /proc/stat counts 10 ms ticks: two of slack per reading


def hog_cpu_s(cpu: float) -> float:
    """Start a child that burns `cpu` CPU-seconds and exits; its CPU time as the kernel accounted it."""
    proc = subprocess.Popen([sys.executable, "-c", HOG.format(cpu=cpu)])
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped here
    return usage.ru_utime + usage.ru_stime


@pytest.fixture
def idle_job():
    """A job that sleeps, the meter's root: the hogs the test starts are its own children, not the job's."""
    job = subprocess.Popen(["sleep", "60"])
    yield job.pid
    job.kill()
    job.wait()


def test_a_hog_beside_the_process_is_counted_as_others_and_not_as_its_own(idle_job):
    meter = LoadMeter.start(threads=1, root=idle_job)
    assert meter is not None
    hog = hog_cpu_s(0.6)
    window = meter.window()
    assert window is not None
    assert window.others_cpu_s >= hog - 2 * TICK  # the hog's seconds, at least: other load only adds
    assert window.cpu_s < 0.3  # this process waited; the hog is not its CPU
    assert window.others_share >= (hog - 2 * TICK) / (window.wall_s * window.cores)
    assert window.cores == len(os.sched_getaffinity(0)) and window.threads == 1


def test_others_share_rises_with_a_hog_above_the_measured_baseline(idle_job):
    """Two windows of equal length, the job sleeping in both: the first with the machine's load as it is now
    (measured, not assumed idle), the second with a hog spinning on every core. With every core taken the
    second reads nearly all the cores as others', at least the baseline's share (less two ticks)."""
    cores = len(os.sched_getaffinity(0))
    meter = LoadMeter.start(threads=1, root=idle_job)
    assert meter is not None
    time.sleep(0.8)
    baseline = meter.lap()
    with hogs(cores):
        meter.lap()
        time.sleep(0.8)
        loaded = meter.lap()
    assert baseline is not None and loaded is not None
    assert loaded.others_share > 0.85  # hogs on every core: the cores are others', whatever else ran
    assert loaded.others_share >= baseline.others_share - 2 * TICK / baseline.wall_s
    assert LoadWindow(**{**vars(loaded), "threads": cores}).contended


def test_the_process_own_cpu_is_not_others():
    meter = LoadMeter.start(threads=1)
    assert meter is not None
    before = process_cpu_s()
    end = time.process_time() + 0.4
    while time.process_time() < end:
        pass
    window = meter.window()
    assert window is not None
    assert window.cpu_s == pytest.approx(process_cpu_s() - before, abs=0.05)
    assert window.cpu_s >= 0.38


def _stat_with_busy(path: Path, cores: list[int], ticks: int) -> None:
    """A /proc/stat whose first core has `ticks` busy (user) ticks and the others none."""
    lines = [f"cpu{c} {ticks if k == 0 else 0} 0 0 1000 0 0 0 0 0 0" for k, c in enumerate(cores)]
    path.write_text("\n".join(["cpu  0 0 0 0 0 0 0 0 0 0", *lines, ""]))


def _pid_stat(proc: Path, pid: int, ppid: int, utime: int, stime: int = 0, cutime: int = 0) -> None:
    """A /proc/<pid>/stat line (ticks); its name holds ') (' as a process may name itself."""
    rest = f"S {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} {cutime} 0 20 0 1 0 100 0 0"
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "stat").write_text(f"{pid} (py) (thon) {rest}\n")


def test_a_tree_is_the_root_its_live_descendants_and_what_they_reaped(tmp_path):
    proc, ticks = tmp_path / "proc", os.sysconf("SC_CLK_TCK")
    _pid_stat(proc, 100, 1, utime=50, stime=10, cutime=5)  # the job, which reaped a child worth 5 ticks
    _pid_stat(proc, 101, 100, utime=30)  # its worker
    _pid_stat(proc, 102, 101, utime=7, stime=3)  # the worker's child
    _pid_stat(proc, 200, 1, utime=900)  # unrelated
    (proc / "self").mkdir()  # not a pid: skipped
    assert scan_tree(100, proc) == (pytest.approx((50 + 10 + 5 + 30 + 7 + 3) / ticks), {100, 101, 102})
    assert scan_tree(101, proc) == (pytest.approx(40 / ticks), {101, 102})
    assert scan_tree(999, proc) is None  # no such root: unknown
    assert scan_tree(100, tmp_path / "absent") is None


@pytest.mark.parametrize("busy_s, others_s", [
    (2.0, 1.5),  # 2.0 busy − 0.5 the tree's = 1.5
    (0.3, 0.0),  # 0.3 − 0.5 = −0.2: clamped to 0 (ticks are coarse; nobody ran less than nothing)
])
def test_others_are_the_busy_seconds_less_the_jobs_tree(tmp_path, busy_s, others_s):
    """Between the readings the job's worker gains 0.2 s and its other worker ends, reaped: its 0.3 s move into the
    job's cutime (0.1 s before, 0.4 s after), so the tree gains 0.5 s; an unrelated process's 9 s are others'."""
    stat, proc, cores = tmp_path / "stat", tmp_path / "proc", sorted(os.sched_getaffinity(0))
    ticks = os.sysconf("SC_CLK_TCK")
    _stat_with_busy(stat, cores, 100 * ticks)
    _pid_stat(proc, 100, 1, utime=round(3.0 * ticks))
    _pid_stat(proc, 101, 100, utime=round(1.0 * ticks))
    _pid_stat(proc, 102, 100, utime=round(0.1 * ticks))
    _pid_stat(proc, 200, 1, utime=0)
    meter = LoadMeter.start(threads=1, root=100, stat=stat, proc=proc)
    assert meter is not None
    _stat_with_busy(stat, cores, round((100 + busy_s) * ticks))
    _pid_stat(proc, 100, 1, utime=round(3.0 * ticks), cutime=round(0.4 * ticks))
    _pid_stat(proc, 101, 100, utime=round(1.2 * ticks))
    (proc / "102" / "stat").unlink()
    _pid_stat(proc, 200, 1, utime=round(9.0 * ticks))
    window = meter.window()
    assert window is not None
    assert (window.cpu_s, window.others_cpu_s, window.cores, window.threads) == (
        pytest.approx(0.5), pytest.approx(others_s), len(cores), 1)
    (proc / "100" / "stat").unlink()  # the job's root gone: the load is unknown from here
    assert meter.window() is None


JOB = """import multiprocessing as mp, sys, time
def burn(cpu, done, release):
    end = time.process_time() + cpu
    while time.process_time() < end:
        pass
    done.put(time.process_time())
    release.wait()
if __name__ == "__main__":
    ctx = mp.get_context("fork")  # as a DataLoader's workers start
    done, release = ctx.Queue(), ctx.Event()
    print("ready", flush=True)
    sys.stdin.readline()
    worker = ctx.Process(target=burn, args=({cpu}, done, release))
    worker.start()
    print(done.get(), flush=True)
    sys.stdin.readline()
    release.set()
    worker.join()
    print("joined", flush=True)
    sys.stdin.readline()
"""


def test_a_jobs_multiprocessing_worker_is_the_job_and_an_unrelated_process_is_others():
    """A real job process (the meter's root) whose multiprocessing worker burns 0.5 CPU-s and reports it, then an
    unrelated process (the test's own child, not the job's) burning 0.5 CPU-s: the worker's seconds are the job's,
    while it lives and after it was reaped (then in the job's cutime), and the unrelated seconds are others'. One
    busy process at a time."""
    job = subprocess.Popen([sys.executable, "-c", JOB.format(cpu=0.5)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert job.stdin is not None and job.stdout is not None
    try:
        assert job.stdout.readline().strip() == "ready"
        meter = LoadMeter.start(threads=1, root=job.pid)
        assert meter is not None
        job.stdin.write("go\n")
        job.stdin.flush()
        worker = float(job.stdout.readline())  # the worker's CPU, by its own clock; it lives on, idle
        hog = hog_cpu_s(0.5)
        live = meter.lap()
        job.stdin.write("release\n")
        job.stdin.flush()
        assert job.stdout.readline().strip() == "joined"
        reaped, whole = meter.lap(), meter.window()
    finally:
        job.kill()
        job.wait()
    assert live is not None and reaped is not None and whole is not None
    assert live.cpu_s >= worker - 2 * TICK  # the live worker is the job's ...
    assert live.cpu_s < worker + 0.25  # ... and the unrelated hog is not
    assert live.others_cpu_s >= hog - 2 * TICK
    assert reaped.cpu_s < 0.25  # reaping moves the worker's seconds into the job's cutime: none appear twice
    assert whole.cpu_s >= worker - 2 * TICK  # and none vanish


def test_a_gpu_window_records_the_load_and_predicts_no_slowdown():
    """Others held half the cores of a GPU run: recorded (its share), but no slowdown and never contended; the
    flag goes through the JSON and a combined window of any GPU window is a GPU run's."""
    cpu = LoadWindow(wall_s=10.0, cpu_s=10.0, others_cpu_s=10.0, cores=2, threads=2)
    gpu = LoadWindow(wall_s=10.0, cpu_s=10.0, others_cpu_s=10.0, cores=2, threads=2, gpu=True)
    assert (cpu.slowdown, cpu.contended) == (2.0, True)
    assert (gpu.others_share, gpu.slowdown, gpu.contended) == (0.5, 1.0, False)
    assert gpu.describe() == "GPU run; others held 50% of the CPUs"
    data = json.loads(json.dumps(gpu.to_json()))
    assert data["gpu"] is True and data["contended"] is False and LoadWindow.from_json(data) == gpu
    assert LoadWindow.from_json(cpu.to_json() | {"gpu": None}) == cpu  # absent (an older file): a CPU run's
    combined = LoadWindow.combined([cpu, gpu])
    assert combined is not None and combined.gpu and not combined.contended


def test_a_meter_told_gpu_keeps_a_gpu_runs_window_and_finds_this_machines_device(tmp_path):
    from tunelab.host.cpuload import on_gpu

    meter = LoadMeter.start(threads=1, gpu=True)
    assert meter is not None
    window = meter.window()
    assert window is not None and window.gpu and window.slowdown == 1.0
    torch = sys.modules.get("torch")
    expected = torch is not None and torch.cuda.is_available()
    assert on_gpu() is expected
    default = LoadMeter.start(threads=1)
    assert default is not None and (window := default.window()) is not None and window.gpu is expected


def test_the_slowdown_is_the_cores_its_threads_wanted_over_the_cores_left():
    idle = LoadWindow(wall_s=10.0, cpu_s=20.0, others_cpu_s=0.0, cores=2, threads=2)
    assert (idle.others_share, idle.free_cores, idle.slowdown, idle.contended) == (0.0, 2.0, 1.0, False)
    half = LoadWindow(wall_s=10.0, cpu_s=10.0, others_cpu_s=10.0, cores=2, threads=2)  # others held 1 of 2
    assert (half.others_share, half.free_cores, half.slowdown, half.contended) == (0.5, 1.0, 2.0, True)
    one_thread = LoadWindow(wall_s=10.0, cpu_s=10.0, others_cpu_s=10.0, cores=2, threads=1)  # 1 core left: enough
    assert one_thread.slowdown == 1.0 and not one_thread.contended
    full = LoadWindow(wall_s=10.0, cpu_s=0.0, others_cpu_s=25.0, cores=2, threads=2)  # more than the cores
    assert full.others_share == 1.0 and full.slowdown == 2 / 0.1
    assert half.describe() == "contended ×2.0" and idle.describe() == "idle"


def test_a_window_round_trips_through_json_and_garbage_reads_as_unknown():
    window = LoadWindow(wall_s=3.25, cpu_s=5.5, others_cpu_s=1.3, cores=2, threads=2)
    data = json.loads(json.dumps(window.to_json()))
    assert data["others_share"] == pytest.approx(0.2) and data["contended"] is True
    assert LoadWindow.from_json(data) == window
    assert LoadWindow.from_json(None) is None
    assert LoadWindow.from_json({"wall_s": 1.0}) is None
    assert LoadWindow.from_json({**data, "cores": "many"}) is None


def test_combined_windows_add_their_seconds():
    a = LoadWindow(wall_s=1.0, cpu_s=1.0, others_cpu_s=0.5, cores=2, threads=1)
    b = LoadWindow(wall_s=2.0, cpu_s=1.5, others_cpu_s=1.5, cores=2, threads=2)
    assert LoadWindow.combined([a, b]) == LoadWindow(wall_s=3.0, cpu_s=2.5, others_cpu_s=2.0, cores=2, threads=2)
    assert LoadWindow.combined([]) is None


def test_without_proc_stat_the_load_is_unknown(tmp_path):
    assert LoadMeter.start(stat=tmp_path / "absent") is None
    assert machine_busy_s([0], tmp_path / "absent") is None


def test_busy_seconds_are_read_from_the_cores_lines(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice (ticks); the aggregate line is ignored
    stat.write_text("cpu  999 0 0 0 0 0 0 0 0 0\ncpu0 100 10 50 1000 40 1 2 3 7 0\ncpu1 200 0 0 5 0 0 0 0 0 0\n"
                    "intr 1 2 3\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert machine_busy_s([0], stat) == pytest.approx((100 + 10 + 50 + 1 + 2 + 3) / ticks)
    assert machine_busy_s([0, 1], stat) == pytest.approx((166 + 200) / ticks)
    assert machine_busy_s([5], stat) is None


def test_the_benchmark_hogs_are_gone_after_their_block_even_on_an_error():
    with pytest.raises(RuntimeError):
        with hogs(2) as procs:
            assert all(p.poll() is None for p in procs)  # spinning
            raise RuntimeError("the benchmark failed")
    assert all(p.returncode is not None for p in procs)  # killed and reaped


def test_a_hog_stops_by_itself_when_its_time_is_up():
    with hogs(1, max_s=0.2) as [proc]:
        assert proc.wait(timeout=30) == 0


def test_a_hog_stops_by_itself_when_the_benchmark_is_killed_outright():
    """SIGKILL runs no `finally`: the hog sees its parent gone and exits (a zombie at most, awaiting a reaper)."""
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    code = ("import time\nfrom hogs import hogs\n"
            "with hogs(1) as [p]:\n    print(p.pid, flush=True)\n    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=bench, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()

    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True

    deadline = time.monotonic() + 20
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone()


def test_a_torch_still_being_imported_counts_one_thread_and_says_so(monkeypatch, capsys):
    """While torch's __init__ runs, sys.modules holds a torch module without get_num_threads yet (a module object
    as Python puts it there): the meter's window counts 1 thread and the process's output says why, once."""
    import types

    from tunelab.host import cpuload

    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    cpuload._say_once.cache_clear()
    meter = LoadMeter.start()  # threads read from torch at each window
    assert meter is not None
    first, second = meter.window(), meter.window()
    assert first is not None and second is not None and first.threads == second.threads == 1
    out = capsys.readouterr().out
    assert out == ("warning: the load meter could not read torch's threads (module 'torch' has no attribute "
                   "'get_num_threads'; torch not yet fully imported): this window's load counts 1 thread, so its "
                   "slowdown may read low\n")


def test_a_quiet_lap_reads_the_jobs_known_pids_and_a_lap_with_others_scans_every_process(tmp_path, monkeypatch):
    """Scanning every process at each logged step cost 5 ms with 89 processes here (a busy node's thousands far
    more): a lap reads the job's pids as the last scan found them, and scans again only where that leaves others
    more than RESCAN_CORES — which is how a child born since is found and counted as the job's."""
    from tunelab.host import cpuload

    stat, proc, cores = tmp_path / "stat", tmp_path / "proc", sorted(os.sched_getaffinity(0))
    ticks = os.sysconf("SC_CLK_TCK")
    scans = []
    real_scan = cpuload.scan_tree
    monkeypatch.setattr(cpuload, "scan_tree", lambda root, p=cpuload.PROC: scans.append(root) or real_scan(root, p))
    _stat_with_busy(stat, cores, 100 * ticks)
    _pid_stat(proc, 100, 1, utime=3 * ticks)
    _pid_stat(proc, 200, 1, utime=0)  # unrelated and idle
    meter = LoadMeter.start(threads=1, root=100, stat=stat, proc=proc)
    assert meter is not None and scans == [100]
    _stat_with_busy(stat, cores, 101 * ticks)  # the machine's one busy second: the job's own
    _pid_stat(proc, 100, 1, utime=4 * ticks)
    quiet = meter.lap()
    assert quiet is not None and scans == [100] and (quiet.cpu_s, quiet.others_cpu_s) == (1.0, 0.0)
    _stat_with_busy(stat, cores, 103 * ticks)  # two more busy seconds, one of them a child born since the scan
    _pid_stat(proc, 100, 1, utime=5 * ticks)
    _pid_stat(proc, 101, 100, utime=1 * ticks)
    busy = meter.lap()
    assert busy is not None and scans == [100, 100]  # others would have held 1 s: scanned again, the child found
    assert (busy.cpu_s, busy.others_cpu_s) == (pytest.approx(2.0), pytest.approx(0.0))
    _stat_with_busy(stat, cores, 104 * ticks)  # the child's next second: a known pid now, no scan
    _pid_stat(proc, 101, 100, utime=2 * ticks)
    assert (lap := meter.lap()) is not None and lap.cpu_s == pytest.approx(1.0) and scans == [100, 100]


def test_a_tree_is_walked_down_the_kernels_children_lists_without_listing_every_process(tmp_path):
    """Where the kernel keeps /proc/<pid>/task/<tid>/children the job's tree is walked from its root (a few reads
    per process of the job) instead of reading every process's stat: children forked by any thread, grandchildren
    too, and nothing outside the tree (a process that names the root as parent but is in no children list is not
    read: the walk never lists /proc)."""
    from tunelab.host.cpuload import scan_tree, walk_tree

    proc, ticks = tmp_path / "proc", os.sysconf("SC_CLK_TCK")
    _pid_stat(proc, 100, 1, utime=3 * ticks)
    _pid_stat(proc, 101, 100, utime=1 * ticks)  # forked by the root's second thread
    _pid_stat(proc, 102, 101, utime=2 * ticks)  # a grandchild
    _pid_stat(proc, 300, 100, utime=50 * ticks)  # in no children list: a walk cannot see it, a scan would
    for pid, tid, kids in ((100, 100, ""), (100, 107, "101 "), (101, 101, "102 "), (102, 102, "")):
        (proc / str(pid) / "task" / str(tid)).mkdir(parents=True, exist_ok=True)
        (proc / str(pid) / "task" / str(tid) / "children").write_text(kids)
    assert walk_tree(100, proc) == (6.0, frozenset({100, 101, 102}))
    assert scan_tree(100, proc) == (6.0, frozenset({100, 101, 102}))  # the walk, not the scan (which finds 300)
    (proc / "100" / "task" / "100" / "children").unlink()
    (proc / "100" / "task" / "107" / "children").unlink()  # a kernel without children files: the scan
    assert walk_tree(100, proc) is None
    assert scan_tree(100, proc) == (56.0, frozenset({100, 101, 102, 300}))


def test_the_walk_finds_this_processs_real_children():
    """On this machine's own /proc: two children started here are in the walked tree, as the full scan finds them."""
    from tunelab.host.cpuload import PROC, walk_tree
    from tunelab.host.cpuload import _scan_every_process as scan_every

    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)]
    try:
        walked = walk_tree(os.getpid(), PROC)
        if walked is None:
            pytest.skip("this kernel keeps no /proc/<pid>/task/<tid>/children files")
        assert {k.pid for k in kids} <= walked[1]
        assert walked[1] == scan_every(os.getpid(), PROC)[1]
    finally:
        for k in kids:
            k.kill()
            k.wait()
