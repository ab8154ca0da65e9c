"""The local executor's warm starts (execute/warm_jobs.py, train/warm.py), on real training jobs: a job forked from a
process that imported the training stack once trains its run exactly as a job bash started (the same losses, step by
step), is followed, stopped and read through the executor as one, and a warm process that cannot start, or is killed
under a running job, loses nothing."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from waiting import wait_for

from tunelab.execute import warm_jobs
from tunelab.execute.executor import JobKind
from tunelab.execute.job_states import UNSEEN, JobState
from tunelab.execute.local_jobs import LocalExecutor
from tunelab.fsutil import read_json, read_jsonl
from tunelab.host.process import alive
from tunelab.rundir.config import RunConfig
from tunelab.scaffold.write import scaffold

pytestmark = pytest.mark.slow

FORKED = re.compile(r"started warm: forked from process (\d+)")


def _runs(spec_in, where: Path, steps: int) -> list[RunConfig]:
    spec = spec_in(where, factors={"lora_rank": [4, 8]}, controls=False,
                   training={"epochs": 1, "max_steps": steps, "logging_steps": 1, "checkpoint_every": 1000})
    return scaffold(spec).runs


def _until_ended(ex: LocalExecutor, job: str, timeout: float = 240) -> JobState | str:
    assert wait_for(lambda: ex.poll([job])[job].ended, timeout), f"job {job} still running"
    return ex.poll([job])[job].state


def _losses(cfg: RunConfig) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(cfg.run_dir / "metrics.jsonl") if r.get("loss") is not None]


def test_warm_jobs_train_as_bash_started_ones_from_one_import(spec_in, tmp_path):
    cold_r4, _ = _runs(spec_in, tmp_path / "cold", 6)
    warm_r4, warm_r8 = _runs(spec_in, tmp_path / "warm", 6)
    ex = LocalExecutor()
    cold = ex.submit(ex.script(cold_r4, JobKind.TRAIN), env={})
    assert _until_ended(ex, cold) == JobState.COMPLETED
    with ex.warm_starts():
        first = ex.submit(ex.script(warm_r4, JobKind.TRAIN), env={})
        assert _until_ended(ex, first) == JobState.COMPLETED
        second = ex.submit(ex.script(warm_r8, JobKind.TRAIN), env={})
        assert _until_ended(ex, second) == JobState.COMPLETED
        (warm,) = ex._warm.by_env.values()  # one warm process for the one environment
        assert warm.threads == 1  # nothing but the main thread when it forked
    assert not warm.running  # ended with the block
    parents = {int(m.group(1)) for cfg in (warm_r4, warm_r8) for m in FORKED.finditer((cfg.run_dir / "train.log")
                                                                                     .read_text())}
    assert parents == {warm.proc.pid}
    assert "started warm" not in (cold_r4.run_dir / "train.log").read_text()
    for cfg, job in ((warm_r4, first), (warm_r8, second)):
        summary = read_json(cfg.run_dir / "summary.json")
        assert summary["state"] == "completed" and summary["pid"] == int(job) != warm.proc.pid
    assert _losses(warm_r4) == _losses(cold_r4) and len(_losses(cold_r4)) == 6  # the same training, bit for bit
    assert _losses(warm_r8) != _losses(warm_r4)  # (not one run's records read twice)


def test_a_warm_job_is_stopped_by_the_executor_and_survives_its_warm_process(spec_in, tmp_path):
    stopped, orphaned = _runs(spec_in, tmp_path / "exp", 400)
    ex = LocalExecutor()
    with ex.warm_starts():
        job = ex.submit(ex.script(stopped, JobKind.TRAIN), env={})
        assert os.getpgid(int(job)) == int(job)  # its own process group, as bash's job is: SIGTERM reaches it all
        assert wait_for(lambda: len(_losses(stopped)) >= 2, 120)
        ex.cancel([job])
        assert _until_ended(ex, job) == JobState.FAILED  # exit 1 after saving, as a bash-started job's
        status = read_json(stopped.run_dir / "status.json")
        assert status["state"] == "interrupted" and "saved on SIGTERM" in status["error"]
        other = ex.submit(ex.script(orphaned, JobKind.TRAIN), env={})
        (warm,) = ex._warm.by_env.values()
        assert wait_for(lambda: len(_losses(orphaned)) >= 2, 120)
        warm.proc.send_signal(signal.SIGKILL)  # its warm process gone: the job trains on, followed by its pid
        warm.proc.wait()
        assert ex.poll([other])[other].state == JobState.RUNNING
        os.killpg(int(other), signal.SIGTERM)
        assert wait_for(lambda: read_json(orphaned.run_dir / "status.json")["state"] == "interrupted", 120)
        assert wait_for(lambda: ex.poll([other])[other].state == UNSEEN, 30)  # its exit status unsaid: unseen


def test_a_warm_process_that_cannot_start_leaves_the_job_to_bash(spec_in, tmp_path, monkeypatch, capsys):
    cfg, _ = _runs(spec_in, tmp_path / "exp", 2)
    monkeypatch.setattr(warm_jobs, "WARM_MODULE", "tunelab.train.no_such_module")
    ex = LocalExecutor()
    with ex.warm_starts():
        job = ex.submit(ex.script(cfg, JobKind.TRAIN), env={})
        assert _until_ended(ex, job) == JobState.COMPLETED
    assert "started warm" not in (cfg.run_dir / "train.log").read_text()
    said = capsys.readouterr().out
    assert "could not start" in said and "no_such_module" in said


def test_ctrl_c_while_a_warm_job_starts_leaves_no_job_running(spec_in, tmp_path):
    cfg, _ = _runs(spec_in, tmp_path / "exp", 400)
    warm = warm_jobs.WarmProcess({**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    real_get, started = warm.replies.get, []

    def interrupted(timeout=None):
        started.append(real_get(timeout=timeout))  # the job was forked and said so ...
        warm.replies.put(started[-1])  # ... its reply still to be taken when Ctrl-C lands
        warm.replies.get = real_get
        raise KeyboardInterrupt

    warm.replies.get = interrupted
    with pytest.raises(KeyboardInterrupt):
        warm.start(cfg.run_dir / "run.yaml", cfg.run_dir / "train.log")
    pid = int(started[0]["started"])
    assert not warm.running  # the warm process killed ...
    assert wait_for(lambda: not alive(pid), 120)  # ... and the job it had forked stopped, not left training
    assert not (cfg.run_dir / "summary.json").exists()


def test_a_warm_process_that_never_gets_ready_is_ended_and_the_job_left_to_bash(spec_in, tmp_path, monkeypatch,
                                                                                  capsys):
    cfg, _ = _runs(spec_in, tmp_path / "exp", 2)
    monkeypatch.setattr(warm_jobs, "WARM_MODULE", "json.tool")  # reads its stdin, never says ready
    monkeypatch.setattr(warm_jobs, "READY_TIMEOUT_S", 1.0)
    ex = LocalExecutor()
    with ex.warm_starts():
        job = ex.submit(ex.script(cfg, JobKind.TRAIN), env={})
        (warm,) = ex._warm.by_env.values()
        assert not warm.running  # ended, not left waiting
        assert _until_ended(ex, job) == JobState.COMPLETED
    assert "started warm" not in (cfg.run_dir / "train.log").read_text()
    assert "it gave no reply in time and was ended" in capsys.readouterr().out


def test_a_sweep_starts_its_lanes_jobs_warm_where_job_sh_is_scaffolds(spec_in, tmp_path, monkeypatch):
    """`tunelab run`'s sweep (run_sweep with scaffold's check, one lane): the runs whose job.sh scaffold wrote are forked
    from one warm process, their summaries say so and what its imports took, and the history keeps their start-up as
    a cold job's would have been (their own plus those imports); a run whose job.sh a person edited runs it as written
    (its edit ran, it started cold, its own start-up kept)."""
    from tunelab.execute.sweep import run_sweep
    from tunelab.ledger import history
    from tunelab.scaffold.write import unedited_job_script

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    spec = spec_in(tmp_path / "exp", factors={"lora_rank": [4, 8, 16]}, controls=False,
                   training={"epochs": 1, "max_steps": 3, "logging_steps": 1, "checkpoint_every": 1000},
                   resources={"executor": "local", "gpus_per_run": 0, "cpu_runs_at_once": 1})
    runs = {cfg.training.lora_rank: cfg for cfg in scaffold(spec).runs}
    edited = runs[16].run_dir / "job.sh"
    edited.write_text(edited.read_text().replace("exec ", "echo edited > edited.txt\nexec ", 1))
    assert [unedited_job_script(runs[r].run_dir / "job.sh") for r in (4, 8, 16)] == [True, True, False]
    states = run_sweep(LocalExecutor(), spec.parent, warm_if=unedited_job_script)
    assert states == {cfg.name: "completed" for cfg in runs.values()}
    parents = {r: {int(m.group(1)) for m in FORKED.finditer((runs[r].run_dir / "train.log").read_text())}
               for r in (4, 8, 16)}
    assert len(parents[4]) == 1 and parents[4] == parents[8] and parents[16] == set()
    assert (runs[16].run_dir / "edited.txt").read_text() == "edited\n"
    summaries = {r: read_json(runs[r].run_dir / "summary.json") for r in (4, 8, 16)}
    assert [summaries[r].get("started_warm") for r in (4, 8, 16)] == [True, True, None]
    assert all(summaries[r]["startup_s"] > 0 for r in (4, 8, 16))  # each measured its own start-up
    imports = {summaries[r]["warm_imports_s"] for r in (4, 8)}
    assert len(imports) == 1 and 0 < imports.pop() and "warm_imports_s" not in summaries[16]  # one process's, once
    rows = {row.run: row for row in history.load()}
    for r in (4, 8):
        assert rows[runs[r].name].startup_s == round(summaries[r]["startup_s"] + summaries[r]["warm_imports_s"], 3)
    assert rows[runs[16].name].startup_s == summaries[16]["startup_s"]


def test_a_sweeps_lanes_share_one_warm_process_started_before_any_job(spec_in, tmp_path):
    """On a CPU shared by lanes, a sweep's block (a check given) starts one warm process as the capacity is made, for
    every lane (each forked job takes its lane's share), and only where a run passes the check; the search's block (no
    check) starts none there, but `warm_ahead` starts it before the plan."""
    from tunelab.host.cores import CPUS_ENV, usable_cores

    if usable_cores().count < 2:
        pytest.skip("lanes need two cores")
    spec = spec_in(tmp_path / "exp", factors={"lora_rank": [4, 8]}, controls=False,
                   training={"epochs": 1, "max_steps": 2}, resources={"executor": "local", "gpus_per_run": 0,
                                                                      "cpu_runs_at_once": 2})
    runs = scaffold(spec).runs
    ex = LocalExecutor()
    with ex.warm_starts(lambda script: True):
        devices = ex.capacity(runs)
        (key,) = ex._warm.by_env  # one for both lanes, without a lane's share
        assert len(devices.cpus) == 2 and CPUS_ENV not in dict(key)
    with ex.warm_starts(lambda script: False):
        ex.capacity(runs)
        assert not ex._warm.by_env
    with ex.warm_starts():
        ex.capacity(runs)
        assert not ex._warm.by_env
        ex.warm_ahead()
        assert len(ex._warm.by_env) == 1


def test_each_lanes_job_forked_from_one_warm_process_runs_on_its_own_share(spec_in, tmp_path, monkeypatch):
    """Two lanes' jobs forked from the one warm process, started ahead — before the libraries of this process set
    their variables in its environment, as a plan's do —: each pinned to its lane's share, its threads counted from
    it, as a job bash started with that share's environment is; its losses the same as that job's, bit for bit."""
    from tunelab.execute.local_jobs import cpu_slots
    from tunelab.host.cores import CPUS_ENV, cpu_list, usable_cores

    if usable_cores().count < 2:
        pytest.skip("lanes need two cores")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the suite's worker share: the jobs take tunelab's rule
        monkeypatch.delenv(name, raising=False)
    warm_r4, warm_r8 = _runs(spec_in, tmp_path / "warm", 4)
    cold_r4, _ = _runs(spec_in, tmp_path / "cold", 4)
    shares = [cpu_list(share) for share in cpu_slots(2).values()]
    ex = LocalExecutor()
    cold = ex.submit(ex.script(cold_r4, JobKind.TRAIN), env={CPUS_ENV: shares[0]})
    assert _until_ended(ex, cold) == JobState.COMPLETED
    with ex.warm_starts():
        ex.warm_ahead()
        monkeypatch.setenv("KMP_DUPLICATE_LIB_OK", "True")  # as threadpoolctl's import sets it
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # as torch's inductor sets it
        jobs = [ex.submit(ex.script(cfg, JobKind.TRAIN), env={CPUS_ENV: share})
                for cfg, share in zip((warm_r4, warm_r8), shares)]
        assert [_until_ended(ex, job) for job in jobs] == [JobState.COMPLETED] * 2
        (warm,) = ex._warm.by_env.values()  # the one started ahead served both
    parents = {int(m.group(1)) for cfg in (warm_r4, warm_r8) for m in FORKED.finditer((cfg.run_dir / "train.log")
                                                                                     .read_text())}
    assert parents == {warm.proc.pid}
    for cfg, share in ((warm_r4, shares[0]), (warm_r8, shares[1]), (cold_r4, shares[0])):
        threads = read_json(cfg.run_dir / "summary.json")["threads"]
        assert f"{CPUS_ENV}={share}" in threads["source"] and threads["limit"] == "share", cfg.name
    assert _losses(warm_r4) == _losses(cold_r4) and len(_losses(cold_r4)) == 4


def test_the_plans_loop_measurement_is_forked_from_the_warm_process_started_ahead(tmp_path):
    """Where a warm process is held (a search's, started before its plan), a plan starts no measuring job of its own:
    the loop's measuring job is forked from the warm process when asked — its start-up the imports that process made,
    as its ready line said —, measures the thread count it was given, and after the block a plan is back to its own."""
    from tunelab.forecast import loopjob
    from tunelab.host import ahead

    ex = LocalExecutor()
    with ex.warm_starts():
        ex.warm_ahead()
        (warm,) = ex._warm.by_env.values()
        assert ahead.forker() is warm
        with loopjob.started_ahead(True):
            assert loopjob._AHEAD.get() is None  # no interpreter of its own started
            got = loopjob.measure([1])[1]
            assert loopjob.imports_ahead() == warm.imports_s
    assert ahead.forker() is None
    assert got["ok"] and got["started_warm"] is True and got["threads"] == 1, got
    assert warm.imports_s is not None and got["imports_s"] == warm.imports_s > 0
    assert got["loop_step_s"] > 0 and got["bare_step_s"] > 0


def test_a_module_job_from_a_warm_process_that_is_gone_is_left_to_the_caller(tmp_path):
    """A warm process killed before the plan asks: run_module says it could not (None), at once, and the plan
    starts its own measuring job (forecast/loopjob.py)."""
    warm = warm_jobs.WarmProcess({**os.environ, "HF_HUB_OFFLINE": "1"})
    assert warm.ready.wait(warm_jobs.READY_TIMEOUT_S) and warm.running
    warm.proc.kill()
    warm.proc.wait()
    assert warm.run_module("tunelab.train.loop_cost", [str(tmp_path)], tmp_path / "job.log", dict(os.environ),
                           60) is None
    warm.close()


def test_a_second_warm_process_names_the_variables_its_jobs_environment_differs_in(capsys):
    """A job whose environment differs from the first warm process's (beyond PER_JOB_ENV) gets a warm process of its
    own — one import more —, and the line says which variables differ, as they were found when a library set one in
    the planning process (KMP_DUPLICATE_LIB_OK); a job of the same environment but its share says nothing."""
    from tunelab.host.cores import CPUS_ENV

    base = {**os.environ, "HF_HUB_OFFLINE": "1"}
    processes = warm_jobs.WarmProcesses()
    try:
        first = processes.prepare(base)
        assert processes.prepare({**base, CPUS_ENV: "0"}) is first and "second warm" not in capsys.readouterr().out
        second = processes.prepare({**base, "TUNELAB_TEST_SET_AS_IT_RAN": "1"})
        assert second is not first and len(processes.by_env) == 2
        said = capsys.readouterr().out
        assert "a second warm process for training jobs" in said and "TUNELAB_TEST_SET_AS_IT_RAN" in said
    finally:
        processes.close()
