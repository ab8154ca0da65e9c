"""The per-part summary of a profiled step (train/profile_report.py) on events worked by hand, the probe's
--profile option as typed, and tunelab's per-micro-batch counts kept on the batch's device until a log reads them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunelab.rundir.checkpoints import Counters
from tunelab.train.metrics import LocalCounts, count_batch, sync_counters
from tunelab.train.probe_steps import parse_args
from tunelab.train.profile_report import Part, parts_table, summarize


def event(name: str, start: float, end: float, parent=None):
    return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), cpu_parent=parent)


def test_each_operator_counts_in_the_innermost_part_it_started_in():
    # one step of 1,000 µs: forward 100-400, the Trainer's callbacks 500-900 holding tunelab's 600-700
    mm = event("aten::mm", 150, 200)
    events = [
        event("ProfilerStep*", 0, 1000), event("part:forward", 100, 400), mm,
        event("aten::t", 160, 170, parent=mm),  # nested in an operator: not a dispatch of its own
        event("part:callbacks_other", 500, 900), event("part:callbacks_tunelab", 600, 700),
        event("aten::_local_scalar_dense", 650, 660),  # a .item() inside tunelab's callback
        event("aten::add", 950, 960),  # in the step, in no part: the loop's
        event("aten::mul", 1500, 1510),  # after the step: not counted
        event("Optimizer.step#AdamW.step", 400, 450), event("aten::_fused_adamw_", 410, 440),
    ]
    p = summarize(events, "cpu")
    assert p.steps == 1 and p.step_ms == 1.0
    assert (p.part(Part.FORWARD).ops, p.part(Part.FORWARD).syncs, p.part(Part.FORWARD).host_ms) == (1, 0, 0.3)
    tl = p.part(Part.CALLBACKS_TUNELAB)
    assert (tl.ops, tl.syncs, tl.host_ms, tl.calls, tl.owner) == (1, 1, 0.1, 1, "tunelab")
    assert p.part(Part.CALLBACKS_OTHER).host_ms == 0.3  # 400 µs less tunelab's 100 nested in it
    assert p.part(Part.OPTIMIZER).ops == 1 and p.part(Part.OPTIMIZER).host_ms == 0.05
    other = p.part(Part.LOOP_OTHER)
    assert other.ops == 1 and other.host_ms == pytest.approx(0.25)  # 1,000 − 300 − 400 − 50
    assert p.ops == 4 and p.syncs == 1
    assert sum(c.host_ms for c in p.parts) == pytest.approx(p.step_ms)
    assert p.part(Part.FORWARD).kernels is None  # no CUDA: no launches counted
    assert "callbacks_tunelab" in parts_table(p)


def test_two_steps_are_averaged_and_a_gpu_counts_launches_and_runtime_syncs():
    events = [event("ProfilerStep*", 0, 100), event("ProfilerStep*", 100, 300),
              event("part:backward", 10, 90), event("aten::mm", 20, 30), event("cudaLaunchKernel", 21, 22),
              event("part:backward", 110, 290), event("aten::mm", 120, 130), event("cudaLaunchKernel", 121, 122),
              event("cudaLaunchKernel", 123, 124), event("cudaStreamSynchronize", 125, 126),
              event("aten::_local_scalar_dense", 127, 129)]  # the operator, its sync counted once (the runtime's)
    p = summarize(events, "NVIDIA H100")
    b = p.part(Part.BACKWARD)
    assert (p.steps, p.step_ms, b.calls, b.ops, b.kernels, b.syncs) == (2, 0.15, 2, 1.5, 1.5, 0.5)
    assert b.host_ms == pytest.approx(0.13)  # (80 + 180) / 2 µs


@pytest.mark.parametrize("argv, expected", [
    (["r.yaml", "--steps=3", "--profile", "out"], (Path("r.yaml"), False, 3, Path("out"))),
    (["--profile=out", "r.yaml", "--max-batch"], (Path("r.yaml"), True, None, Path("out"))),
    (["r.yaml"], (Path("r.yaml"), False, None, None)),
    (["r.yaml", "--profile"], None),  # no directory
    (["r.yaml", "--profile=a", "--profile=b"], None),
    (["r.yaml", "--trace"], None),
])
def test_probe_command_line(argv, expected):
    assert parse_args(argv) == expected


def test_counts_stay_on_the_device_until_a_log_reads_them():
    local, counters = LocalCounts(), Counters()
    padded = {"input_ids": torch.zeros(2, 4, dtype=torch.long),
              "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    tokens, nonpad, examples = count_batch(padded)
    assert (tokens, examples) == (8, 2) and isinstance(nonpad, torch.Tensor)  # not read here: no sync
    local.add(tokens, nonpad, examples)
    # padding-free: one row of 3 + 2 examples, all 5 tokens real, examples where position ids restart
    free = {"input_ids": torch.zeros(1, 5, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 0, 1]])}
    local.add(*count_batch(free))
    assert isinstance(local.examples, torch.Tensor) and isinstance(local.nonpad_tokens, torch.Tensor)
    sync_counters(counters, local)
    assert (counters.tokens, counters.nonpad_tokens, counters.examples) == (13, 5 + 5, 2 + 2)
    assert (local.tokens, local.nonpad_tokens, local.examples) == (0, 0, 0)
    assert isinstance(counters.nonpad_tokens, int) and isinstance(counters.examples, int)


def test_a_gpu_run_takes_fused_adamw_and_a_cpu_run_the_library_default():
    from tunelab.train.trainer import optimizer_args

    assert optimizer_args(cuda=True) == {"optim": "adamw_torch_fused"}  # transformers' OptimizerNames spelling
    assert optimizer_args(cuda=False) == {}  # SFTConfig's own default stays


def test_the_trainer_reads_no_loss_on_the_host_per_micro_batch_and_keeps_a_nan_visible(tmp_path):
    """transformers' logging_nan_inf_filter tests each micro-batch's loss with Python's `or` on two tensors (two
    GPU syncs) to swap a NaN for the mean of earlier losses; tunelab turns it off, so neither happens."""
    import torch

    from tunelab.spec import TrainingConfig
    from tunelab.train.trainer import _sft_config

    args = _sft_config(TrainingConfig(), tmp_path, torch.float32, validate=False)
    assert args.logging_nan_inf_filter is False
