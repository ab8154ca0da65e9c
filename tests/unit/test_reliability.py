"""Nothing silently wrong: corrupted files are reported, skipped rows are named, writes that fail name
their file, and `dtype: auto` never trains in emulated bf16."""

from __future__ import annotations

import errno
import json
import logging
import resource
import signal

import pytest

from tunelab.catalog import GPUS, resolve_gpu
from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_text, read_jsonl
from tunelab.ledger import history
from tunelab.rundir.summary import Summary

# ---------------------------------------------------------------- read_jsonl


def test_read_jsonl_reports_a_corrupted_middle_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(TunelabError, match=r"line 2\b") as exc:
        read_jsonl(p)
    assert exc.value.file == str(p)


@pytest.mark.parametrize("data", [
    b'{"step": 1}\n[1, 2]\n{"step": 3}\n',  # valid JSON, but not a row
    b'{"step": 1}\nnot json\n',  # a last line whose newline was written: complete, so corrupted
    b'{"step": 1}\n{"step": "\xff"}\n{"step": 3}\n',  # bytes that are not UTF-8
])
def test_read_jsonl_reports_any_bad_complete_line(tmp_path, data):
    p = tmp_path / "metrics.jsonl"
    p.write_bytes(data)
    with pytest.raises(TunelabError, match=r"line 2\b"):
        read_jsonl(p)


def test_read_jsonl_still_skips_a_cut_off_last_line_and_blank_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n\n  \n{"step": 2}\n{"step": 3, "lo')  # a job killed while writing step 3
    assert [r["step"] for r in read_jsonl(p)] == [1, 2]
    p.write_bytes(b'{"step": 1}\n\x00\x00\x00\x00')  # a crash that left the tail block zeroed, no newline
    assert [r["step"] for r in read_jsonl(p)] == [1]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


# ---------------------------------------------------------------- history rows


def _run_config(tmp_path, model_path):
    from tunelab.rundir.config import RunConfig

    data = tmp_path / "d.json"
    data.write_text(json.dumps({s: [{"input": "a", "output": "A"}] for s in ("train", "validation", "test")}))
    return RunConfig(name="r4", kind="finetune", experiment="e", experiment_dir=str(tmp_path),
                     model={"name": "m", "path": str(model_path)}, dataset={"name": "d", "path": str(data)},
                     prompt="{input}", training={"lora_rank": 4})


def test_a_history_row_without_architecture_warns_naming_run_and_model(tmp_path, caplog):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cfg = _run_config(tmp_path, broken)
    with caplog.at_level(logging.WARNING, logger="tunelab"):
        row = history.from_run_dir(cfg, Summary(steps=10, tokens=1000, tokens_per_s=50.0))
    assert row.layers is None and row.tokens_per_s == 50.0  # still recorded: the measured speed is worth keeping
    [msg] = [r.getMessage() for r in caplog.records]
    assert str(cfg.run_dir) in msg and str(broken) in msg


# ---------------------------------------------------------------- failed writes


def test_a_write_failing_midway_names_the_target_and_leaves_no_temp_file(tmp_path):
    """A real short write from the kernel: RLIMIT_FSIZE refuses the rest (EFBIG) as a full disk does (ENOSPC);
    the OSError from write() carries no file name, so atomic_write_text must add the one the user knows."""
    target = tmp_path / "checkpoint.json"
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError) as exc:
            atomic_write_text(target, "x" * (1 << 20))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert exc.value.errno == errno.EFBIG and exc.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- dtype: auto


@pytest.mark.parametrize("capability, expected", [
    (None, "float32"),  # CPU
    ((6, 0), "float32"),  # P100
    ((7, 0), "float32"),  # V100: bf16 only emulated
    ((7, 5), "float32"),  # T4
    ((8, 0), "bfloat16"),  # A100
    ((8, 6), "bfloat16"),  # A6000
    ((8, 9), "bfloat16"),  # L4, L40S, RTX 4090
    ((9, 0), "bfloat16"),  # H100, H200
    ((10, 0), "bfloat16"),  # B200
])
def test_auto_dtype_is_bf16_only_from_ampere_on(capability, expected):
    from tunelab.host.device import auto_dtype_name

    assert auto_dtype_name(capability) == expected


def test_explicit_dtypes_and_cpu_auto():
    import torch

    from tunelab.host.device import resolve_dtype

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cuda") == torch.float16 and resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_gpu_table_has_no_bf16_tensor_core_figure_before_ampere():
    """V100's published 125 TFLOPS are fp16 tensor cores; it has no bf16 tensor cores, and auto trains fp32 there."""
    from tunelab.host.device import auto_dtype_name

    assert resolve_gpu("V100").bf16_tflops == pytest.approx(15.7)
    assert resolve_gpu("V100-16GB").bf16_tflops == pytest.approx(15.7)
    for gpu in GPUS.values():
        assert gpu.compute_capability is not None, gpu.name
        if auto_dtype_name(gpu.compute_capability) != "bfloat16":
            assert gpu.bf16_tflops < 20, gpu.name  # fp32-class peak, not a tensor-core figure
        else:
            assert gpu.bf16_tflops > 100, gpu.name


def test_plan_models_the_dtype_the_run_will_train_in():
    """auto = bf16 on an H100, fp32 on a V100: validate's weight memory follows (2 vs 4 bytes a weight)."""
    from tunelab.catalog import resolve_gpu as lookup_gpu
    from tunelab.spec import TrainingConfig

    assert TrainingConfig(dtype="auto").planned_dtype(lookup_gpu("H100").compute_capability) == "bfloat16"
    assert TrainingConfig(dtype="auto").planned_dtype(lookup_gpu("V100").compute_capability) == "float32"
    assert TrainingConfig(dtype="float16").planned_dtype(lookup_gpu("V100").compute_capability) == "float16"
