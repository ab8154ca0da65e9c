"""The Slurm executor against a real single-node Slurm cluster (no mocks of sbatch): real training and
evaluation jobs, afterok dependencies, failures classified from sacct + logs + run files, retries.

The TIMEOUT scenario needs Slurm's 1-minute minimum limit to expire (~1.5 min), so it is submitted
first (module fixture) and checked last, while the other scenarios run beside it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner
from waiting import wait_for

from tunelab.cli import app
from tunelab.execute.slurm_cli import SlurmExecutor
from tunelab.execute.status import StatusRow, cancel, status_rows
from tunelab.execute.sweep import run_sweep
from tunelab.fsutil import read_json, read_jsonl
from tunelab.ledger import store as ledger
from tunelab.rundir.config import load_run_config
from tunelab.scaffold.write import scaffold

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
runner = CliRunner()
SLURM = {"executor": "slurm", "gpus_per_run": 0,
         "slurm": {"time_limit": "15", "submit_delay_s": 0.1, "poll_interval_s": 1}}
# A job that must still be training when Slurm or the test stops it takes steps of at least this long
# (tunelab.faults.pace_step: the rest of each step idle, as on a GPU), not training flat out on a shared CPU.
PACED_STEP_S = "0.25"


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, f"{args}: {res.output}"
    return res


def _jobs(exp: Path, run: str | None = None) -> list[dict]:
    rows = ledger.query(exp, "SELECT * FROM jobs ORDER BY id")
    return [r for r in rows if run is None or r["run"] == run]


def _status(exp: Path) -> dict[str, StatusRow]:
    return {r.name: r for r in status_rows(exp)}



@pytest.fixture(scope="module")
def timeout_submitted(tmp_path_factory, tiny_model, caps_dataset, slurm_cluster):
    exp = tmp_path_factory.mktemp("timeout") / "exp"
    exp.mkdir()
    spec = {
        "name": "to", "models": [{"name": "tiny", "path": str(tiny_model)}],
        "datasets": [{"name": "caps", "path": str(caps_dataset)}], "prompt": "Capitalize: {input}",
        "factors": {"lora_rank": [4]}, "controls": False,
        "training": {"epochs": 100, "learning_rate": 0.002, "batch_size": 8, "max_seq_len": 64,
                     "modules_to_save": ["embed_tokens", "lm_head"], "logging_steps": 1, "checkpoint_every": 7},
        # no early warning here: the job really reaches its limit (test_slurm_scale.py covers the warning)
        "resources": {**SLURM, "slurm": {**SLURM["slurm"], "time_limit": "1", "signal_before_limit_s": 0}},
    }
    (exp / "experiment.yaml").write_text(yaml.safe_dump(spec))
    scaffold(exp / "experiment.yaml")
    with pytest.MonkeyPatch.context() as mp:  # sbatch exports it to the job: it waits out its limit mostly idle
        mp.setenv("TUNELAB_FAULT_STEP_S", PACED_STEP_S)
        run_sweep(SlurmExecutor(), exp)
    return exp


def test_sweep_train_then_eval_afterok_report_and_idempotent_rerun(write_spec):
    # the two runs have one shape: their training jobs go as one job array, one task at a time (%1)
    spec = write_spec(factors={"lora_rank": [4, 8]}, eval={"max_tokens": 8, "limit": 10},
                      resources={**SLURM, "slurm": {**SLURM["slurm"], "array_max_running": 1}})
    exp = spec.parent
    _ok(["scaffold", str(spec)])
    for f in ("runs/tiny_r4/job.sbatch", "runs/tiny_r4/eval.sbatch", "controls/tiny_base/eval.sbatch"):
        assert (exp / f).is_file()
    assert "sbatch --parsable --dependency=afterok:$train" in (exp / "submit_all.sh").read_text()
    dry = _ok(["run", str(exp), "--dry-run"]).output
    assert dry.count("would submit") == 4 and "--array=0-1%1" in dry
    assert "afterok:<array>_0" in dry and "afterok:<array>_1" in dry
    assert _jobs(exp) == []
    _ok(["run", str(exp), "--wait"])
    jobs = _jobs(exp)
    assert len(jobs) == 5
    by = {(j["run"], j["kind"]): j for j in jobs}
    for run in ("tiny_r4", "tiny_r8"):
        train, ev = by[(run, "train")], by[(run, "eval")]
        assert ev["depends_on"] == train["job_id"]
        assert train["failure"] == "completed" and train["state"] == "COMPLETED" and train["exit_code"] == "0:0"
        assert ev["failure"] == "completed"
        assert (exp / "runs" / run / f"slurm-train-{train['job_id']}.out").is_file()
        assert read_json(exp / "runs" / run / "eval" / "epoch_0" / "exact_match" / "scores.json")["samples"] == 10
    assert by[("tiny_base", "eval")]["depends_on"] is None
    tasks = [by[(run, "train")]["job_id"] for run in ("tiny_r4", "tiny_r8")]
    array = tasks[0].split("_")[0]
    assert tasks == [f"{array}_0", f"{array}_1"]
    assert "(array task)" in (exp / "runs" / "tiny_r8" / f"slurm-train-{tasks[1]}.out").read_text()
    span = {r.split("|")[0]: r.split("|")[1:] for r in subprocess.run(
        ["sacct", "-n", "-P", "-X", "-S", "2000-01-01", "-j", ",".join(tasks), "--format=JobID,Start,End"],
        capture_output=True, text=True, check=True).stdout.splitlines() if r.strip()}
    assert span[tasks[1]][0] >= span[tasks[0]][1], span  # %1: the second task started after the first ended
    st = _status(exp)
    assert {k: v.state for k, v in st.items()} == {"tiny_r4": "completed", "tiny_r8": "completed",
                                                      "tiny_base": "completed"}
    assert st["tiny_r4"].eval == "scored" and st["tiny_r4"].progress.startswith("step 40/40")
    results = json.loads(_ok(["results", str(exp), "--json"]).stdout)["runs"]
    assert all(r["state"] == "completed" and r["score"] is not None for r in results)
    _ok(["report", str(exp)])
    assert (exp / "report" / "report.md").is_file()
    # re-running submits nothing new
    out = _ok(["run", str(exp)]).output
    assert "nothing to submit" in out and len(_jobs(exp)) == 5
    attempts = ledger.query(exp, "SELECT * FROM attempts")
    assert sorted(a["run"] for a in attempts) == ["tiny_r4", "tiny_r8"]


def test_failed_job_reports_exit_code_and_its_eval_never_runs(write_spec, tmp_path):
    spec = write_spec(factors={"lora_rank": [4]}, controls=False, resources=SLURM)
    cfg = scaffold(spec).runs[0]
    from tunelab.rundir.config import save_run_config

    # the dataset disappears after scaffolding: the job fails with exit code 1
    save_run_config(cfg.model_copy(update={"dataset": cfg.dataset.model_copy(
        update={"path": str(tmp_path / "gone.json")})}))
    # `tunelab run` refuses it up front (its checks read the dataset) ...
    refused = runner.invoke(app, ["run", str(spec.parent), "--wait"])
    assert refused.exit_code == 1 and "gone.json" in refused.output
    # ... and with --no-checks the job itself fails, exit code 1
    res = runner.invoke(app, ["run", str(spec.parent), "--wait", "--no-checks"])
    assert res.exit_code == 1 and "did not complete" in res.output
    train, ev = _jobs(spec.parent)
    assert train["state"] == "FAILED" and train["exit_code"] == "1:0" and train["failure"] == "failed"
    assert "FAILED with exit code 1" in train["detail"] and "dataset file not found" in train["detail"]
    assert "not retried" in train["detail"]
    assert ev["failure"] == "cancelled" and "DependencyNeverSatisfied" in ev["detail"]
    st = _status(spec.parent)[cfg.name]
    assert st.state == "failed" and st.shown == "FAILED" and "exit code 1" in st.detail
    out = json.loads(_ok(["status", str(spec.parent), "--json"]).stdout)
    assert out["runs"][0]["state"] == "failed"  # the value (RowState); the table shows FAILED
    assert ledger.query(spec.parent, "SELECT state, exit_code FROM attempts") == [{"state": "failed", "exit_code": 1}]


def test_injected_oom_is_healed_by_halving_the_micro_batch(write_spec, monkeypatch):
    spec = write_spec(factors={"lora_rank": [4]}, controls=False, resources=SLURM,
                      training={"batch_size": 8, "gradient_accumulation_steps": 1}, eval={"limit": 5})
    exp = spec.parent
    cfg = scaffold(spec).runs[0]
    monkeypatch.setenv("TUNELAB_FAULT_OOM_ABOVE_BATCH", "4")  # exported to the jobs by sbatch
    results = run_sweep(SlurmExecutor(), exp, wait=True)
    assert results == {cfg.name: "completed"}
    trains = [j for j in _jobs(exp) if j["kind"] == "train"]
    assert [j["attempt"] for j in trains] == [1, 2]
    assert trains[0]["failure"] == "oom" and "CUDA out of memory" in trains[0]["detail"]
    assert "batch_size 8->4, gradient_accumulation_steps 1->2" in trains[0]["detail"]
    assert "torch.OutOfMemoryError" in (cfg.run_dir / f"slurm-train-{trains[0]['job_id']}.out").read_text()
    assert trains[1]["failure"] == "completed"
    new = load_run_config(cfg.run_dir)
    assert new.attempt == 2 and new.training.batch_size == 4 and new.training.gradient_accumulation_steps == 2
    summary = read_json(cfg.run_dir / "summary.json")
    assert summary["effective_batch_size"] == 8 and summary["attempt"] == 2 and summary["steps"] == 40
    reasons = [a["reason"] for a in ledger.query(exp, "SELECT * FROM attempts ORDER BY id")]
    assert "oom" in reasons[0] and "examples per optimizer step and process 8 unchanged" in reasons[0]
    assert _status(exp)[cfg.name].eval == "scored"


@pytest.mark.fault_run  # a long fault run (a kill, then the resume): `make test-faults`, outside `make test`
def test_cancelled_run_then_resubmitted_resumes_from_its_checkpoint(write_spec, monkeypatch):
    spec = write_spec(factors={"lora_rank": [8]}, controls=False, resources=SLURM,
                      training={"epochs": 2, "logging_steps": 5}, eval={"limit": 5})
    exp = spec.parent
    monkeypatch.setenv("TUNELAB_FAULT_STEP_S", PACED_STEP_S)  # epoch 1 lasts 10 s or more: cancelled inside it
    cfg = scaffold(spec).runs[0]
    run_sweep(SlurmExecutor(), exp)
    assert wait_for(lambda: (cfg.run_dir / "checkpoints" / "epoch_0").is_dir(), 240), "no epoch_0 checkpoint"
    res = _ok(["cancel", str(exp), cfg.name])
    assert "cancelled tiny_r8 train job" in res.output
    train = _jobs(exp, cfg.name)[0]
    assert train["state"] == "CANCELLED" and train["failure"] == "cancelled"
    assert _status(exp)[cfg.name].state == "cancelled"
    assert wait_for(lambda: read_json(cfg.run_dir / "status.json").get("pid") is None or
                     not Path(f"/proc/{read_json(cfg.run_dir / 'status.json')['pid']}").exists(), 60)
    killed_at = read_json(cfg.run_dir / "status.json")["step"]
    assert 40 <= killed_at < 80
    # sacct agrees (asynchronously)
    assert wait_for(lambda: (SlurmExecutor().acct([train["job_id"]]) or {}).get(train["job_id"], [None])[0] is not None
                     and SlurmExecutor().acct([train["job_id"]])[train["job_id"]][0].base_state == "CANCELLED", 60, every=0.5)
    # a new `tunelab run` resubmits the cancelled run; it resumes instead of restarting
    assert run_sweep(SlurmExecutor(), exp, wait=True) == {cfg.name: "completed"}
    status = read_json(cfg.run_dir / "status.json")
    assert status["resumed_from"].startswith("checkpoint-") and status["restarts"] == 1
    resumed = int(status["resumed_from"].split("-")[1])
    assert resumed == killed_at  # scancel's SIGTERM made the trainer save where it was (train/interrupts.py)
    steps = [r["step"] for r in read_jsonl(cfg.run_dir / "metrics.jsonl") if r["loss"] is not None]
    assert steps == sorted(set(steps)) and steps[-1] == 80
    jobs = [j for j in _jobs(exp) if j["kind"] == "train"]
    assert len(jobs) == 2 and "resubmission after cancelled" in jobs[1]["reason"]
    log = (cfg.run_dir / f"slurm-train-{jobs[1]['job_id']}.out").read_text()
    assert f"resuming from checkpoint-{resumed}" in log


@pytest.mark.fault_run  # a long fault run (Slurm kills the job at its limit, then the resume): `make test-faults`
def test_timeout_is_classified_and_resubmitted_with_a_longer_limit_resuming(timeout_submitted, monkeypatch):
    exp = timeout_submitted
    monkeypatch.setenv("TUNELAB_FAULT_STEP_S", PACED_STEP_S)  # the resubmitted job too
    cfg = load_run_config(exp / "runs" / "tiny_r4")

    def retried() -> bool:
        run_sweep(SlurmExecutor(), exp)  # refresh + retry policy, as a person re-running `tunelab run` would
        return len([j for j in _jobs(exp) if j["kind"] == "train"]) >= 2

    assert wait_for(retried, 240, every=3), _jobs(exp)
    first, second = [j for j in _jobs(exp) if j["kind"] == "train"][:2]
    assert first["state"] == "TIMEOUT" and first["failure"] == "timeout"
    assert "time limit 1 -> 00:02:00" in first["detail"]
    assert "DUE TO TIME LIMIT" in (cfg.run_dir / f"slurm-train-{first['job_id']}.out").read_text()
    assert second["attempt"] == 2 and second["time_limit"] == "00:02:00"
    new = load_run_config(cfg.run_dir)
    assert new.attempt == 2 and new.resources.slurm.time_limit == "00:02:00"
    assert "#SBATCH --time=00:02:00" in (cfg.run_dir / "job.sbatch").read_text()
    # the resubmitted job resumes from the last checkpoint of the timed-out one
    assert wait_for(lambda: (read_json(cfg.run_dir / "status.json") or {}).get("attempt") == 2 and
                     read_json(cfg.run_dir / "status.json").get("resumed_from"), 120)
    # it lost at most one checkpoint interval (7 steps) of the timed-out job's training, not the epoch
    resumed = int(read_json(cfg.run_dir / "status.json")["resumed_from"].split("-")[1])
    logged = [int(m) for m in re.findall(r"\[tunelab train\] step (\d+)/",
                                         (cfg.run_dir / f"slurm-train-{first['job_id']}.out").read_text())]
    assert resumed > 0 and resumed >= max(logged) - 7, (resumed, max(logged))
    cancel(exp)
    assert _status(exp)[cfg.name].state == "cancelled"


def test_node_job_trains_and_evaluates_a_group_of_runs_in_one_allocation(write_spec):
    """resources.slurm.pack: node: one sbatch job runs both runs (the local scheduler inside the allocation)
    and evaluates them; each run's train and eval rows carry that job's id and are judged from its files."""
    spec = write_spec(factors={"lora_rank": [4, 8]}, controls=False, eval={"max_tokens": 8, "limit": 4},
                      training={"max_steps": 8},
                      resources={**SLURM, "slurm": {**SLURM["slurm"], "pack": "node", "pack_time_limit": "20"}})
    exp = spec.parent
    _ok(["scaffold", str(spec)])
    dry = _ok(["run", str(exp), "--dry-run"]).output
    assert dry.count("would submit") == 1 and "node job: tiny_r4, tiny_r8" in dry
    _ok(["run", str(exp), "--wait"])
    jobs = _jobs(exp)
    assert {(j["run"], j["kind"]) for j in jobs} == {(r, k) for r in ("tiny_r4", "tiny_r8") for k in ("train", "eval")}
    (node,) = {j["job_id"] for j in jobs}  # one Slurm job for everything
    assert all(j["failure"] == "completed" and j["state"] == "COMPLETED" for j in jobs), jobs
    sacct = subprocess.run(["sacct", "-n", "-P", "-X", "-S", "2000-01-01", "-j", node, "--format=JobID,State"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert sacct == [f"{node}|COMPLETED"]
    for run in ("tiny_r4", "tiny_r8"):
        assert read_json(exp / "runs" / run / "summary.json")["steps"] == 8
        assert read_json(exp / "runs" / run / "eval" / "epoch_0" / "exact_match" / "scores.json")["samples"] == 4
        assert (exp / "runs" / run / f"slurm-train-{node}.out").resolve() == exp / "slurm" / f"node-{node}.out"
    script = (exp / "slurm" / "node-tiny_r4.sbatch").read_text()
    assert "#SBATCH --time=20\n" in script and "--gres" not in script  # CPU runs: no GPUs asked for
    assert ledger.query(exp, "SELECT COUNT(*) AS n FROM attempts")[0]["n"] == 2  # recorded by the coordinator
    assert "nothing to submit" in _ok(["run", str(exp)]).output
