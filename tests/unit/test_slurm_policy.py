"""Failure classification (sacct rows + log text + run files) and the retry policy, without a cluster."""

from __future__ import annotations

import json

import pytest
import yaml

from tunelab.errors import TunelabError
from tunelab.execute import retry
from tunelab.execute.failures import (
    CANCELLED,
    COMPLETED,
    FAILED,
    NODE_FAIL,
    OOM,
    PREEMPTED,
    TIMEOUT,
    Failure,
    SacctRow,
    classify,
)
from tunelab.execute.local_jobs import LocalExecutor
from tunelab.execute.slurm_cli import SlurmExecutor
from tunelab.execute.slurm_jobs import format_time_limit, parse_time_limit, sbatch_options, train_time_limit
from tunelab.rundir import Status
from tunelab.rundir.estimate import RunEstimate
from tunelab.scaffold.write import scaffold


def rows(state: str, code: str = "0:0", batch_state: str | None = None) -> list[SacctRow]:
    return [SacctRow("12", state, code, "00:01:00"), SacctRow("12.batch", batch_state or state, code, "00:01:00"),
            SacctRow("12.extern", "COMPLETED", "0:0", "00:01:00")]


@pytest.mark.parametrize("state,code,log,status,complete,kind,detail", [
    ("COMPLETED", "0:0", "", {}, True, COMPLETED, "completed"),
    ("FAILED", "1:0", "", {"state": "completed"}, True, COMPLETED, "completed, job exit 1"),
    ("FAILED", "1:0", "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.95 GiB",
     {}, False, OOM, "GPU out of memory: torch.OutOfMemoryError: CUDA out of memory"),
    ("FAILED", "1:0", "", {"error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"}, False, OOM,
     "GPU out of memory"),
    ("OUT_OF_MEMORY", "0:125", "", {}, False, OOM, "host out of memory"),
    ("FAILED", "137:0", "slurmstepd: error: Detected 1 oom_kill event in StepId=123.batch", {}, False, OOM,
     "host out of memory"),
    ("TIMEOUT", "0:0", "", {}, False, TIMEOUT, "TIMEOUT"),
    ("CANCELLED", "0:15",
     "slurmstepd: error: *** JOB 123 ON node01 CANCELLED AT 2025-10-18T10:00:00 DUE TO TIME LIMIT ***", {}, False,
     TIMEOUT, "TIMEOUT"),
    ("PREEMPTED", "0:15", "", {}, False, PREEMPTED, "PREEMPTED"),
    ("CANCELLED", "0:15", "*** JOB 9 ON n1 CANCELLED AT 2025-10-18T10:00:00 DUE TO PREEMPTION ***", {}, False,
     PREEMPTED, "PREEMPTED"),
    ("NODE_FAIL", "0:0", "", {}, False, NODE_FAIL, "NODE_FAIL"),
    ("CANCELLED by 0", "0:15", "", {}, False, CANCELLED, "CANCELLED by 0"),
    ("FAILED", "2:0", "", {"error": "TunelabError: dataset file not found"}, False, FAILED,
     "FAILED with exit code 2: TunelabError: dataset file not found"),
])
def test_classify(state, code, log, status, complete, kind, detail):
    f = classify(state, code, rows(state, code), log, Status.from_json(status), complete)
    assert f.kind == kind and detail in f.detail, f


def test_step_row_state_counts_and_outputs_win_over_exit_code():
    # the job row says FAILED, its batch step OUT_OF_MEMORY: host OOM
    assert classify("FAILED", "0:125", rows("FAILED", "0:125", "OUT_OF_MEMORY")).kind == OOM
    # training finished, then a later line of the script failed: completed, and both are reported
    f = classify("FAILED", "3:0", rows("FAILED", "3:0"), "", Status(state="completed"), outputs_complete=True)
    assert f.kind == COMPLETED and f.detail.startswith("completed, job exit 3") and f.exit_code == 3
    # exit code from the sacct job row when none is given
    assert classify("FAILED", None, rows("FAILED", "4:0")).exit_code == 4


@pytest.fixture
def run_cfg(write_spec, tmp_path, monkeypatch):
    # an empty history: no planner time estimate, so time limits come from the defaults here
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "empty-history.db"))

    def make(**training):
        spec = write_spec(factors={"lora_rank": [4]}, controls=False,
                          training={"batch_size": 8, **training},
                          resources={"executor": "slurm", "gpus_per_run": 0, "max_retries": 2})
        return scaffold(spec).runs[0]
    return make


def test_oom_halves_micro_batch_keeps_effective_batch(run_cfg):
    cfg = run_cfg(gradient_accumulation_steps=2)
    d = retry.decide(cfg, Failure(OOM, "GPU out of memory"))
    assert d.retry and not d.restart
    t = d.config.training
    assert (t.batch_size, t.gradient_accumulation_steps) == (4, 4) and d.config.attempt == 2
    assert "examples per optimizer step and process 16 unchanged" in d.reason
    new = retry.apply(d)
    from tunelab.rundir.config import load_run_config

    assert load_run_config(cfg.run_dir) == new
    # odd micro-batch: divided by its smallest factor, effective batch still exact
    d3 = retry.decide(run_cfg(batch_size=6).model_copy(update={"training": cfg.training.model_copy(
        update={"batch_size": 3, "gradient_accumulation_steps": 1})}), Failure(OOM, ""))
    assert (d3.config.training.batch_size, d3.config.training.gradient_accumulation_steps) == (1, 3)


def test_oom_gives_up_at_micro_batch_1_and_after_max_retries(run_cfg):
    cfg = run_cfg(batch_size=1)
    assert not retry.decide(cfg, Failure(OOM, "")).retry
    cfg = run_cfg()
    assert not retry.decide(cfg.model_copy(update={"attempt": 3}), Failure(OOM, "")).retry
    assert "gave up after 2 retries" in retry.decide(cfg.model_copy(update={"attempt": 3}), Failure(OOM, "")).reason


def test_oom_restarts_when_the_checkpoint_is_mid_epoch(run_cfg):
    cfg = run_cfg()
    ckpt = cfg.run_dir / "trainer_state" / "checkpoint-13"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"epoch": 0.325}))
    assert retry.decide(cfg, Failure(OOM, "")).restart
    (ckpt / "trainer_state.json").write_text(json.dumps({"epoch": 1.0}))
    assert not retry.decide(cfg, Failure(OOM, "")).restart


def test_timeout_doubles_the_limit_preemption_keeps_it_others_not_retried(run_cfg):
    cfg = run_cfg().model_copy(update={"estimate": None})
    # no time_limit in the spec and no estimate: the default, said to be one
    assert train_time_limit(cfg) == ("04:00:00", "tunelab default; set resources.slurm.time_limit")
    d = retry.decide(cfg, Failure(TIMEOUT, "TIMEOUT"), SlurmExecutor)
    assert d.retry and d.config.resources.slurm.time_limit == "08:00:00" and d.config.training == cfg.training
    assert train_time_limit(d.config) == ("08:00:00", "run.yaml resources.slurm.time_limit")
    assert "resume" in d.reason
    p = retry.decide(cfg, Failure(PREEMPTED, "PREEMPTED"))
    assert p.retry and p.config.resources == cfg.resources
    assert retry.decide(cfg, Failure(NODE_FAIL, "")).retry
    for kind in (CANCELLED, FAILED):
        assert not retry.decide(cfg, Failure(kind, "x")).retry
    # a planner estimate that proved short is doubled the same way
    est = cfg.model_copy(update={"estimate": RunEstimate(slurm_time_limit="00:15:00")})
    assert train_time_limit(est) == ("00:15:00", "planner estimate")
    assert retry.decide(est, Failure(TIMEOUT, "TIMEOUT"), SlurmExecutor).config.resources.slurm.time_limit == "00:30:00"
    # an executor without time limits (local) resumes with the resources unchanged
    local = retry.decide(cfg, Failure(TIMEOUT, "TIMEOUT"), LocalExecutor)
    assert local.retry and local.config.resources == cfg.resources


@pytest.mark.parametrize("text,minutes", [("1", 1), ("90", 90), ("1:30", 2), ("04:00:00", 240), ("1-00:00:00", 1440),
                                          ("2-12", 3600), ("0:0:30", 1)])
def test_time_limits(text, minutes):
    assert parse_time_limit(text) == minutes


def test_format_time_limit():
    assert format_time_limit(2) == "00:02:00" and format_time_limit(1500) == "1-01:00:00"


def test_spec_slurm_section_strict_and_sbatch_options(write_spec):
    from tunelab.spec import load_spec

    bad = write_spec(resources={"executor": "slurm", "slurm": {"partitoin": "gpu"}})
    with pytest.raises(TunelabError, match=r"experiment.yaml: resources.slurm.partitoin: unknown key"):
        load_spec(bad)
    bad = write_spec(resources={"executor": "slurm", "slurm": {"time_limit": "2 hours"}})
    with pytest.raises(TunelabError, match=r"resources.slurm.time_limit: .*Slurm time limit"):
        load_spec(bad)
    spec = write_spec(controls=True, resources={"executor": "slurm", "gpus_per_run": 1, "slurm": {
        "account": "lab", "partition": "gpu", "qos": "high", "constraint": "a100", "cpus_per_task": 4, "mem": "32G",
        "time_limit": "02:00:00", "modules": ["cuda/12"], "setup": ["source /opt/env/bin/activate"],
        "extra_sbatch": ["#SBATCH --exclusive"]}})
    plan = scaffold(spec)
    cfg = plan.runs[0]
    opts = sbatch_options(cfg, "train")
    for o in ("--account=lab", "--partition=gpu", "--qos=high", "--constraint=a100", "--cpus-per-task=4",
              "--mem=32G", "--time=02:00:00", "--gres=gpu:1", "--exclusive"):
        assert o in opts
    job = (cfg.run_dir / "job.sbatch").read_text()
    assert "module load cuda/12\nsource /opt/env/bin/activate\n" in job
    assert job.rstrip().endswith("-m tunelab.train.job run.yaml") and "#SBATCH --time=02:00:00" in job
    ev = (plan.controls[0].run_dir / "eval.sbatch").read_text()
    assert f"tunelab eval {plan.experiment_dir} --run tiny_base --no-ledger" in ev
    assert not (plan.controls[0].run_dir / "job.sbatch").exists()
    submit = (plan.experiment_dir / "submit_all.sh").read_text()
    assert "--dependency=afterok:$train" in submit and "controls/tiny_base/eval.sbatch" in submit


def test_user_config_file_fills_what_the_spec_leaves_out(write_spec, tmp_path, monkeypatch):
    user = tmp_path / "config.yaml"
    user.write_text(yaml.safe_dump({"executor": "slurm", "slurm": {"account": "me", "partition": "cpu",
                                                                     "max_queued": 7}}))
    monkeypatch.setenv("TUNELAB_CONFIG", str(user))
    spec = write_spec(resources={"slurm": {"partition": "gpu"}})
    cfg = scaffold(spec).runs[0]
    assert cfg.resources.executor == "slurm"
    s = cfg.resources.slurm
    assert (s.account, s.partition, s.max_queued) == ("me", "gpu", 7)  # the spec wins
    user.write_text(yaml.safe_dump({"slurm": {"acount": "me"}}))
    with pytest.raises(TunelabError, match=r"config.yaml: slurm.acount: unknown key"):
        scaffold(spec, force=True)


def test_scaffolding_again_keeps_a_retried_run_yaml(run_cfg, write_spec):
    from tunelab.rundir.config import load_run_config

    cfg = run_cfg()
    retry.apply(retry.decide(cfg, Failure(OOM, "")))
    (cfg.run_dir / "status.json").write_text('{"state": "failed"}')  # the run has results
    spec = cfg.run_dir.parent.parent / "experiment.yaml"
    plan = scaffold(spec)  # no error: only retry fields differ
    kept = load_run_config(cfg.run_dir)
    assert kept.attempt == 2 and kept.training.batch_size == 4 and plan.runs[0] == kept
    assert "attempt 2" in (cfg.run_dir / "job.sbatch").read_text()
    # a real change of the spec is still refused
    write_spec(factors={"lora_rank": [4]}, controls=False, training={"batch_size": 8, "learning_rate": 0.1},
               resources={"executor": "slurm", "gpus_per_run": 0, "max_retries": 2})
    with pytest.raises(TunelabError, match="already has results"):
        scaffold(spec)
