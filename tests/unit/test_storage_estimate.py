"""Storage, planned: the adapter size predicted from the LoRA shapes equals the file PEFT really saves; the
checkpoints predicted to stay are those train/'s retention really keeps; the sweep's check names the runs and
the field that makes it fit."""

from __future__ import annotations

import json

import pytest

from tunelab.catalog import resolve_architecture
from tunelab.estimate.storage import adapter_tensors, retention, safetensors_bytes
from tunelab.plan.storage import RunStorage, SweepStorage
from tunelab.rundir.estimate import DiskEstimate


@pytest.mark.parametrize("rank,targets,modules,dtype", [
    (4, "all-linear", ["embed_tokens", "lm_head"], "bfloat16"),
    (8, ["q_proj", "v_proj"], [], "float32"),
    (16, ["q_proj", "k_proj", "down_proj"], ["lm_head"], "float32"),
])
def test_adapter_bytes_equal_the_file_peft_saves(tiny_model, tmp_path, rank, targets, modules, dtype):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.models.lora import lora_config

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=getattr(torch, dtype))
    get_peft_model(model, lora_config(rank, 2.0 * rank, 0.0, targets, modules)).save_pretrained(tmp_path)
    saved = (tmp_path / "adapter_model.safetensors").stat().st_size
    predicted = safetensors_bytes(adapter_tensors(resolve_architecture(tiny_model), rank, targets, modules, dtype))
    assert predicted == saved


def _save(state_dir, step: int, epoch: float, max_steps: int) -> None:
    """The files that make a trainer checkpoint complete, as the trainer and tunelab write them."""
    d = state_dir / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text(json.dumps({"epoch": epoch, "global_step": step, "max_steps": max_steps}))
    (d / "tunelab_counters.json").write_text("{}")


@pytest.mark.parametrize("keep,every", [(None, None), (None, 3), (1, None), (2, 4), (3, 2), (5, None)])
def test_trainer_states_predicted_are_those_the_pruning_keeps(tmp_path, keep, every):
    from tunelab.train.checkpoints import prune_trainer_checkpoints

    per_epoch, epochs = 10, 4
    steps = per_epoch * epochs
    saves = sorted({s for s in range(per_epoch, steps + 1, per_epoch)} | (set(range(every, steps, every)) if every
                                                                           else set()))
    most = 0
    for step in saves:
        _save(tmp_path, step, step / per_epoch, steps)
        most = max(most, len(list(tmp_path.iterdir())))  # before this save's retention runs
        prune_trainer_checkpoints(tmp_path, keep)
    mid = len([s for s in saves if s % per_epoch])
    assert retention(keep, epochs, mid) == (len(list(tmp_path.iterdir())), most)


def _disk(peak: int, kept: int, state: int) -> DiskEstimate:
    return DiskEstimate(trainer_state_bytes=state, trainer_states_kept=kept, total_bytes=peak - state,
                        peak_bytes=peak)


def test_a_sweep_that_cannot_fit_names_its_runs_and_the_field():
    gib = 1 << 30
    runs = [RunStorage(f"r{i}", _disk(10 * gib, 4, 2 * gib), 0, _disk(4 * gib, 1, 2 * gib)) for i in range(7)]
    sweep = SweepStorage("/scratch/exp", "/scratch", runs, 50 * gib, None)
    assert not sweep.fits and sweep.needs == 70 * gib
    text = sweep.problem()
    assert text is not None
    assert text.startswith("the sweep needs ~70.0 GiB more on /scratch (/scratch/exp) but 50.0 GiB is free: runs r0 ")
    assert "r4 (10.0 GiB: 4 trainer states of 2.0 GiB) and 2 more" in text
    assert text.endswith("set training.keep_checkpoints: 1 (one trainer state per run: needs ~28.0 GiB)")
    tight = SweepStorage("/scratch/exp", "/scratch", runs, 20 * gib, None)
    assert "even with training.keep_checkpoints: 1 it needs ~28.0 GiB" in (tight.problem() or "")
    assert SweepStorage("/scratch/exp", "/scratch", runs, 80 * gib, None).problem() is None


def test_validate_fails_when_the_sweep_cannot_fit_its_filesystem_and_passes_with_the_field_named(
        tmp_path, request, spec_in):
    """Two 6-epoch runs on a real 9 MiB filesystem: every epoch's trainer state (the default: ~12 MB) does not fit;
    one per run (the field the error names: ~6 MB) does."""
    from smallfs import small_filesystem
    from typer.testing import CliRunner

    from tunelab.cli import app

    mnt = small_filesystem(tmp_path, request, 9 * 1024)
    spec = spec_in(mnt / "exp", training={"epochs": 6})
    res = CliRunner().invoke(app, ["validate", str(spec), "--gpu", "A100-80GB"])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "the sweep needs ~" in text and f"more on {mnt} ({mnt / 'exp'})" in text, text
    assert "runs tiny_r8 (" in text and "tiny_r4 (" in text and "6 trainer states of" in text, text
    assert "set training.keep_checkpoints: 1 (one trainer state per run: needs ~" in text, text
    spec = spec_in(mnt / "exp", training={"epochs": 6, "keep_checkpoints": 1})
    res = CliRunner().invoke(app, ["validate", str(spec), "--gpu", "A100-80GB"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("examples", [0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 12345])
def test_the_data_order_line_is_sized_as_the_indices_written_one_by_one(examples):
    from tunelab.estimate.storage import order_bytes

    assert order_bytes(examples) == 80 + len("".join(f"{i}, " for i in range(examples)))
