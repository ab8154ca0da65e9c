"""GPU memory in the catalog is the total the device reports (nvidia-smi's MiB), not the nominal GB read as GiB,
and "fits" compares reserved + CUDA context with it."""

import pytest

from tunelab.catalog import GPUS, match_gpu, resolve_gpu
from tunelab.estimate.memory import MemoryEstimate
from tunelab.estimate.peak import MemoryFigure, fits

MIB = 2**20


def _figure(reserved_mib: float, context_mib: float) -> MemoryFigure:
    """A simulated step whose reserved memory plus CUDA context is the given number of MiB."""
    analytic = MemoryEstimate(0, 0.0, 0, 0.0, 0.0, 0.0, 0.0)
    return MemoryFigure(required_gib=(reserved_mib + context_mib) / 1024, allocated_gib=reserved_mib / 1024 - 1,
                        reserved_gib=reserved_mib / 1024, context_gib=context_mib / 1024, source="test",
                        analytic=analytic)


def test_the_catalog_holds_what_nvidia_smi_reports_as_total():
    # nvidia-smi's memory.total of each model on current drivers (sources beside the table in catalog.py)
    reported = {"A100-40GB": 40960, "A100-80GB": 81920, "H100-80GB": 81559, "H200": 143771, "L40S": 46068,
                "A6000": 49140, "RTX4090": 24564, "V100-32GB": 32768, "V100-16GB": 16384, "L4": 23034,
                "A10G": 23028}
    assert {g.name: g.memory_mib for g in GPUS.values()} == reported
    h100 = resolve_gpu("H100")
    assert h100.memory_gib == 81559 / 1024 == 79.6474609375  # not the nominal 80
    assert resolve_gpu("H200").memory_gib == pytest.approx(140.4, abs=0.01)  # 143771 / 1024, not 141


def test_fits_at_the_h100_boundary_is_decided_by_the_reported_total():
    h100 = resolve_gpu("H100-80GB")
    context = 512.0  # MiB
    # reserved + context one MiB under 81,559 MiB fits; one MiB over does not
    assert fits(_figure(81559 - context - 1, context), h100.memory_gib)
    assert fits(_figure(81559 - context, context), h100.memory_gib)
    assert not fits(_figure(81559 - context + 1, context), h100.memory_gib)
    # 81,600 MiB is under 80 GiB (81,920 MiB): the nominal GB read as GiB would have called it fitting
    assert 81600 < 80 * 1024 and not fits(_figure(81600 - context, context), h100.memory_gib)


@pytest.mark.parametrize("device, total_bytes, expected", [
    # torch.cuda.get_device_properties(0): name and total_memory as public logs print them
    ("NVIDIA H100 80GB HBM3", 81089 * MIB, "H100-80GB"),  # _CudaDeviceProperties(... total_memory=81089MB ...)
    ("NVIDIA H100 80GB HBM3", 85045477376, "H100-80GB"),  # deviceQuery: 81106 MBytes (85045477376 bytes)
    ("NVIDIA H200", 143156 * MIB, "H200"),
    ("NVIDIA L40S", 45589 * MIB, "L40S"),
    ("NVIDIA A100-SXM4-40GB", 42298834944, "A100-40GB"),  # deviceQuery: 40339 MBytes
    ("Tesla V100-SXM2-32GB", int(31.74 * 2**30), "V100-32GB"),  # OOM message: "31.74 GiB total capacity"
    ("Tesla V100-SXM2-16GB", int(15.78 * 2**30), "V100-16GB"),
])
def test_a_device_is_matched_from_torchs_total_memory(device, total_bytes, expected):
    gpu = match_gpu(device, total_bytes / 2**30)
    assert gpu is not None and gpu.name == expected


def test_an_unknown_memory_size_of_a_known_name_is_not_matched():
    assert match_gpu("NVIDIA A100-SXM4-80GB", 20.0) is None  # neither 40 nor 80 GB


def test_estimate_json_names_the_gpu_total(tiny_model):
    import json

    from typer.testing import CliRunner

    from tunelab.cli import app

    res = CliRunner().invoke(app, ["estimate", "--model", str(tiny_model), "--gpu", "H100", "--max-seq-len", "64",
                                   "--batch-size", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["gpu_memory_mib"] == 81559 and out["gpu_memory_gib"] == round(81559 / 1024, 3) == 79.647
    assert out["fits"] is True
