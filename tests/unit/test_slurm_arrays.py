"""Job arrays: runs of the same shape grouped, the array script, and what `run --dry-run` would submit."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.execute.slurm_cli import array_groups, array_spec, shape, write_array_script
from tunelab.scaffold.write import scaffold

SLURM = {"executor": "slurm", "gpus_per_run": 0, "slurm": {"time_limit": "15", "array_max_running": 2}}


def test_runs_of_one_shape_form_an_array_others_go_alone(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8, 16]}, controls=False, resources=SLURM)
    runs = scaffold(spec).runs
    assert len({shape(c) for c in runs}) == 1 and not any(o.startswith("--job-name") for o in shape(runs[0]))
    arrays, singles = array_groups(runs)
    assert [[c.name for c in g] for g in arrays] == [[c.name for c in runs]] and singles == []
    assert array_spec(runs) == "0-2%2"
    longer = runs[2].model_copy(update={"resources": runs[2].resources.model_copy(update={
        "slurm": runs[2].resources.slurm.model_copy(update={"time_limit": "30"})})})
    arrays, singles = array_groups([runs[0], runs[1], longer])  # another time limit: another shape
    assert [len(g) for g in arrays] == [2] and singles == [longer]
    off = [c.model_copy(update={"resources": c.resources.model_copy(update={
        "slurm": c.resources.slurm.model_copy(update={"array_max_running": None})})}) for c in runs]
    assert array_groups(off) == ([], off)


def test_array_script_trains_each_task_s_run_and_links_its_log(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8]}, controls=False, resources=SLURM)
    runs = scaffold(spec).runs
    text = write_array_script(runs).read_text()
    assert "runs=(tiny_r4 tiny_r8 )" in text and 'run=${runs[$SLURM_ARRAY_TASK_ID]}' in text
    assert f"#SBATCH --output={spec.parent}/slurm/train-%A_%a.out" in text and "#SBATCH --time=15" in text
    assert "#SBATCH --requeue" in text and text.rstrip().endswith("-m tunelab.train.job run.yaml")
    assert 'ln -sf' in text and '"slurm-train-$task.out"' in text
    if shutil.which("sbatch") is None:
        pytest.skip("the dry run asks for Slurm's commands on PATH")
    dry = CliRunner().invoke(app, ["run", str(spec.parent), "--dry-run"]).output
    assert "sbatch --parsable --array=0-1%2" in dry.replace("\n", " ")
    assert "afterok:<array>_0" in dry and "afterok:<array>_1" in dry
