"""An experiment directory is where it is (issue 55): run.yaml records absolute paths as scaffold wrote them, and
every load places the run where its run.yaml is now, so a copied or moved experiment runs in place; a run
directory taken out of its experiment's layout is refused in one line. And a job that exits 0 without its run's
outputs is said to be exactly that, never "FAILED with exit code 0"."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tunelab.errors import TunelabError
from tunelab.execute.attempts import AttemptRow
from tunelab.execute.failures import FAILED, FailureKind, SacctRow, classify
from tunelab.execute.refresh import EVAL_OUTPUTS
from tunelab.execute.retry import decide
from tunelab.report.checks import run_issues
from tunelab.report.data import RunData
from tunelab.rundir.config import RUN_FILE, load_run_config, save_run_config
from tunelab.rundir.experiment import load_runs
from tunelab.rundir.status import Status
from tunelab.scaffold.write import scaffold


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.fixture
def scaffolded(write_spec, caps_dataset):
    """An experiment scaffolded in tmp/exp whose dataset lives inside it (rows/caps.json, relative in the spec)."""
    spec = write_spec(factors={"lora_rank": [4]}, controls=False)
    exp = spec.parent
    (exp / "rows").mkdir()
    shutil.copy(caps_dataset, exp / "rows" / "caps.json")
    data = yaml.safe_load(spec.read_text())
    data["datasets"][0]["path"] = "rows/caps.json"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    scaffold(spec)
    return exp


def test_a_moved_experiment_is_loaded_where_it_is(scaffolded, tmp_path, tiny_model):
    old = scaffolded.resolve()
    new = tmp_path / "scratch" / "exp-moved"
    new.parent.mkdir()
    shutil.move(old, new)
    recorded = yaml.safe_load((new / "runs" / "tiny_r4" / RUN_FILE).read_text())
    assert recorded["experiment_dir"] == str(old)  # the file is not rewritten: the load places it
    for cfg in (load_run_config(new / "runs" / "tiny_r4" / RUN_FILE), *load_runs(new), *load_runs(new)):
        # (load_runs twice: the second from its cache of parsed run.yaml files, written at the first)
        assert cfg.run_dir == new / "runs" / "tiny_r4" and cfg.experiment_dir == str(new)
        assert cfg.dataset.path == str(new / "rows" / "caps.json")  # inside the experiment: moved with it
        assert cfg.model.path == str(tiny_model.resolve())  # outside it: where it was
        assert not [s for s in _strings(cfg.model_dump(mode="json")) if s.startswith(str(old))]


def test_a_trial_is_placed_in_its_tune_dir(scaffolded, tmp_path):
    old = scaffolded.resolve()
    cfg = load_run_config(old / "runs" / "tiny_r4")
    trial = cfg.model_copy(update={"name": "tiny_r4-trial-3", "directory": str(old / "tune" / "tiny_r4" / "trial-3")})
    save_run_config(trial)
    new = tmp_path / "elsewhere"
    shutil.copytree(old, new)
    got = load_run_config(new / "tune" / "tiny_r4" / "trial-3" / RUN_FILE)
    assert got.run_dir == new / "tune" / "tiny_r4" / "trial-3" and got.experiment_dir == str(new)
    assert load_run_config(old / "tune" / "tiny_r4" / "trial-3").run_dir == old / "tune" / "tiny_r4" / "trial-3"


def test_a_run_dir_out_of_its_experiments_layout_is_refused_naming_where_it_was_scaffolded(scaffolded):
    exp = scaffolded.resolve()
    shutil.copytree(exp / "runs" / "tiny_r4", exp / "runs" / "tiny_r4-again")
    with pytest.raises(TunelabError) as err:
        load_run_config(exp / "runs" / "tiny_r4-again" / RUN_FILE)
    said = str(err.value)
    assert f"scaffolded in {exp}" in said and "<experiment>/runs/tiny_r4" in said and "tunelab scaffold" in said
    assert str(exp / "runs" / "tiny_r4-again") in said and "\n" not in said


def test_scaffolding_a_copied_experiment_again_keeps_its_results_and_writes_it_for_here(scaffolded, tmp_path):
    (scaffolded / "runs" / "tiny_r4" / "status.json").write_text('{"state": "completed"}')  # results: kept
    copy = tmp_path / "exp-early"
    shutil.copytree(scaffolded, copy)
    scaffold(copy / "experiment.yaml")  # not refused as "already has results": the same run, placed here
    assert yaml.safe_load((copy / "runs" / "tiny_r4" / RUN_FILE).read_text())["experiment_dir"] == str(copy)
    assert (copy / "runs" / "tiny_r4" / "status.json").is_file()


def _bash_without_slurm(script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """submit_all.sh with only dirname on PATH besides bash's builtins: no sbatch can be reached."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "dirname").exists():
        (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    return subprocess.run(["/bin/bash", str(script)], capture_output=True, text=True, env={"PATH": str(bin_dir)})


def test_submit_all_slurm_refuses_a_copied_experiment_in_one_line(write_spec, tmp_path):
    spec = write_spec(factors={"lora_rank": [4]}, controls=False, resources={"executor": "slurm", "gpus_per_run": 0})
    exp = scaffold(spec).experiment_dir
    copy = tmp_path / "exp-copy"
    shutil.copytree(exp, copy)
    refused = _bash_without_slurm(copy / "submit_all.sh", tmp_path)
    assert refused.returncode == 1 and refused.stdout == "", refused
    (line,) = refused.stderr.splitlines()
    assert f"scaffolded in {exp}" in line and f"tunelab run {copy} --executor slurm" in line
    assert f"tunelab scaffold {copy}/experiment.yaml" in line
    in_place = _bash_without_slurm(exp / "submit_all.sh", tmp_path)  # the check passes: sbatch is what is missing
    assert in_place.returncode == 127 and "sbatch" in in_place.stderr and "scaffolded in" not in in_place.stderr


def _rows(state: str, code: str) -> list[SacctRow]:
    return [SacctRow("12", state, code, "00:01:00"), SacctRow("12.batch", state, code, "00:01:00")]


@pytest.mark.parametrize("status,detail", [
    (Status(), "exited 0 without writing status.json"),
    (Status(state="running", step=3), "exited 0 with status.json saying running at step 3"),
    (Status(state="failed", error="TunelabError: dataset file not found"),
     "exited 0 with status.json saying failed: dataset file not found"),
    (Status(state="completed"), "exited 0; status.json says completed but summary.json is missing"),
])
def test_a_job_that_exits_0_without_its_outputs_is_said_to_be_that(status, detail):
    for state in ("COMPLETED", None):  # Slurm's word, or the local executor's exit code alone
        f = classify(state, "0:0", _rows("COMPLETED", "0:0") if state else [], "", status)
        assert (f.kind, f.detail, f.exit_code) == (FAILED, detail, 0)
    assert "exit code 0" not in detail
    run = SimpleNamespace(resources=SimpleNamespace(max_retries=2), attempt=1)  # all decide reads of a failed run
    assert decide(run, f).reason == f"failed: not retried automatically ({detail})"  # type: ignore[arg-type]


def test_exit_0_verdict_names_an_evaluation_jobs_scores_and_other_exits_keep_their_code():
    f = classify("COMPLETED", "0:0", _rows("COMPLETED", "0:0"), "", None, expected=EVAL_OUTPUTS)
    assert f.detail == "exited 0 without writing every task's eval/<checkpoint>/<task>/scores.json"
    f = classify("FAILED", "2:0", _rows("FAILED", "2:0"), "", Status(error="ValueError: bad row"))
    assert f.detail == "FAILED with exit code 2: ValueError: bad row"
    assert classify("FAILED", "0:9", _rows("FAILED", "0:9")).detail == "FAILED with exit code 0 (signal 9)"


def test_the_reports_issue_for_a_failed_run_whose_job_exited_0(tmp_path):
    def issue(exit_code: int) -> str:
        run = RunData(name="r", kind="fine-tuned", model="m", dataset="d", factors={}, state="failed",
                      run_dir=tmp_path, rel_dir="runs/r", status=Status(state="failed", step=7),
                      config=SimpleNamespace(attempt=1, training=None, stages=[], trainings=lambda: []),
                      attempts=[AttemptRow(id=1, run="r", attempt=1, exit_code=exit_code, state=FailureKind.FAILED)])
        (found,) = [i.detail for i in run_issues(run) if i.kind == "failed"]
        return found

    assert issue(0).endswith(": exited 0 with status.json saying failed at step 7")
    assert issue(3).endswith(": exit code 3")


def test_no_absolute_path_of_the_experiment_in_the_local_scripts(scaffolded):
    """job.sh and submit_all.sh (local executor) work from wherever the experiment is: every path relative."""
    exp = str(scaffolded.resolve())
    for path in (scaffolded / "submit_all.sh", scaffolded / "runs" / "tiny_r4" / "job.sh"):
        assert exp not in path.read_text(), path
    assert os.access(scaffolded / "runs" / "tiny_r4" / "job.sh", os.X_OK)
