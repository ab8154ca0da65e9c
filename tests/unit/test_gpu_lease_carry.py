"""The lease's carry (benchmarks/gpu_lease_carry.py) without the network: bitsandbytes' wheel cut to the native
library of the image's CUDA, and that CUDA read from the image's freeze."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gpu_lease_carry import image_cuda, trim_native_libs  # noqa: E402

from tunelab.errors import TunelabError  # noqa: E402
from tunelab.wheelhouse.plan import parse_freeze  # noqa: E402

LIBS = ("cuda118", "cuda130", "cuda132", "rocm71")


def _wheel(path: Path) -> Path:
    """A wheel shaped as bitsandbytes' is: its Python, a native library per CUDA/ROCm release and the CPU's."""
    wheel = path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    files = {"bitsandbytes/__init__.py": b"x = 1\n", "bitsandbytes/libbitsandbytes_cpu.so": b"cpu" * 100,
             **{f"bitsandbytes/libbitsandbytes_{lib}.so": lib.encode() * 1000 for lib in LIBS},
             "bitsandbytes-0.50.2.dist-info/METADATA": b"Name: bitsandbytes\nVersion: 0.50.2\n"}
    record = "".join(f"{name},sha256=abc,{len(data)}\n" for name, data in files.items())
    record += "bitsandbytes-0.50.2.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record)
    return wheel


def test_bitsandbytes_keeps_the_images_cuda_library_and_the_cpus(tmp_path):
    wheel = _wheel(tmp_path)
    trim_native_libs(wheel, "cuda130")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
        assert z.read("bitsandbytes/libbitsandbytes_cuda130.so") == b"cuda130" * 1000  # the kept one, intact
    libs = {n for n in names if n.endswith(".so")}
    assert libs == {"bitsandbytes/libbitsandbytes_cuda130.so", "bitsandbytes/libbitsandbytes_cpu.so"}
    assert "bitsandbytes/__init__.py" in names
    # RECORD lists exactly what the wheel holds
    assert {line.split(",")[0] for line in record.splitlines()} == names
    with pytest.raises(TunelabError, match="no libbitsandbytes_cuda124.so"):
        trim_native_libs(_wheel(tmp_path), "cuda124")


def test_the_images_cuda_comes_from_its_cuda_runtime(tmp_path):
    image = parse_freeze("torch==2.11.0\nnvidia-cuda-runtime==13.0.96\n")
    older = parse_freeze("torch==2.6.0\nnvidia-cuda-runtime-cu12==12.4.127\n")
    assert (image_cuda(image), image_cuda(older), image_cuda(parse_freeze("torch==2.13.0\n"))) == ("130", "124", None)
