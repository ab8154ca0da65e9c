"""A kill can land between any two writes of a checkpoint save. Each moment is simulated on the files
of a real finished run (what the kill would have left, on a copy of the one uninterrupted run this module
trains), then the run is resumed: its token counters, logged steps and published epoch_N must equal those of
the uninterrupted run."""

from __future__ import annotations

import shutil

import pytest

from tunelab.fsutil import read_json, read_jsonl
from tunelab.rundir.experiment import load_runs
from tunelab.scaffold.write import scaffold
from tunelab.train.job import train

pytestmark = pytest.mark.slow

COUNTERS = ("tokens", "nonpad_tokens", "examples")  # elapsed and overhead are wall times: never equal


def _outcome(run_dir, summary) -> dict:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    final = read_json(run_dir / "trainer_state" / "checkpoint-120" / "tunelab_counters.json")
    return {
        "summary": {k: summary[k] for k in ("steps", "tokens", "nonpad_tokens", "checkpoints")},
        "counters": {k: final[k] for k in COUNTERS},
        "rows": [(r["step"], r["tokens"], r["nonpad_tokens"], r["examples"]) for r in rows],
    }


def _kill_after(run_dir, step: int, counters_written: bool, published: bool) -> None:
    """The files a kill leaves in the save of checkpoint-STEP (40 steps an epoch), later ones never made."""
    state = run_dir / "trainer_state"
    epoch = step // 40 - 1
    for later in range(step + 40, 121, 40):
        shutil.rmtree(state / f"checkpoint-{later}")
        shutil.rmtree(run_dir / "checkpoints" / f"epoch_{later // 40 - 1}")
    if not counters_written:
        (state / f"checkpoint-{step}" / "tunelab_counters.json").unlink()
    if not published:
        shutil.rmtree(run_dir / "checkpoints" / f"epoch_{epoch}")
    (run_dir / "summary.json").unlink()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, spec_in):
    """(experiment dir, its outcome): one run of 3 epochs, trained to the end without a kill."""
    spec = spec_in(tmp_path_factory.mktemp("uninterrupted") / "exp", factors={"lora_rank": [4]}, controls=False,
                   training={"epochs": 3, "logging_steps": 10})
    cfg = scaffold(spec).runs[0]
    outcome = _outcome(cfg.run_dir, train(cfg).to_json())
    assert outcome["summary"]["checkpoints"] == ["epoch_0", "epoch_1", "epoch_2"]
    assert outcome["counters"]["tokens"] == 3 * read_json(cfg.run_dir / "packing.json")["tokens"]
    return spec.parent, outcome


@pytest.mark.parametrize("counters_written,published", [(False, True), (False, False), (True, False)],
                         ids=["before-counters", "before-counters-and-publish", "before-publish"])
def test_resume_after_kill_inside_a_checkpoint_save(uninterrupted, tmp_path, counters_written, published):
    finished, expected = uninterrupted
    shutil.copytree(finished, tmp_path / "exp")  # each kill on its own copy of the finished run
    (cfg,) = load_runs(tmp_path / "exp")
    run_dir = cfg.run_dir

    _kill_after(run_dir, 80, counters_written, published)
    resumed = _outcome(run_dir, train(cfg).to_json())
    assert resumed == expected
    status = read_json(run_dir / "status.json")
    # a checkpoint without its counters is not complete: resume from the one before it
    assert status["resumed_from"] == ("checkpoint-80" if counters_written else "checkpoint-40")
