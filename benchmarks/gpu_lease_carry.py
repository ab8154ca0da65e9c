"""What a GPU lease carries (scripts/gpu-lease prepare): the wheels the GPU kit's training rows need that the
machine's image lacks, for the image's Python and platform, chosen by tunelab's wheelhouse code
(tunelab.wheelhouse: pip's resolution of tunelab under the image's `pip freeze` as constraints) and cut to what
the training rows import: tunelab's requirements in NOT_FOR_TRAINING (evaluation, the MCP server, the tuner)
and what only they need stay behind. tunelab itself is not a wheel: the checkout travels, on PYTHONPATH.

QLoRA's bitsandbytes (the `qlora` extra) is 43 MB as published, a native library for each CUDA release and
ROCm; the carry keeps only the one the image's torch loads (its CUDA release from the freeze's CUDA runtime),
about 4 MB, so the QLoRA rows travel with the rest in one call's 64 MiB.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.wheelhouse.build import plan_wheelhouse
from tunelab.wheelhouse.plan import parse_freeze
from tunelab.wheelhouse.resolve import download, sha256
from tunelab.wheelhouse.target import Target

ROOT = Path(__file__).resolve().parents[1]
LEASE_BYTES = 64 * 2**20  # what one call carries: the working tree and the carried paths together
# tunelab's requirements the kit's training rows never import (the reference run trained without them)
NOT_FOR_TRAINING = ("inspect-ai", "english-words", "mcp", "optuna")
EXTRAS = ("qlora",)
MANIFEST = "manifest.json"
_CUDA_LIB = re.compile(r"libbitsandbytes_(cuda\d+|rocm\d+)\.so$")


@dataclass(frozen=True)
class CarriedWheel:
    name: str
    version: str
    file: str
    bytes: int
    sha256: str  # of the file carried (after trimming)
    why: str


@dataclass(frozen=True)
class Carry:
    python: str
    platform: str
    cuda: str | None  # the CUDA release bitsandbytes is trimmed to ("130"), None: not trimmed
    wheels: list[CarriedWheel]
    left_out: list[str]  # tunelab's requirements not carried, and why
    tree_bytes: int  # the working tree that travels beside it
    total_bytes: int  # tree and carry: at most LEASE_BYTES

    @property
    def fits(self) -> bool:
        return self.total_bytes <= LEASE_BYTES


def image_cuda(freeze: dict) -> str | None:
    """The CUDA release of the image's torch, from its CUDA runtime package ('13.0.96' -> '130')."""
    runtime = next((p for n, p in freeze.items() if re.fullmatch(r"nvidia-cuda-runtime(-cu\d+)?", n)), None)
    if runtime is None:
        return None
    major, minor = runtime.parsed.release[:2]
    return f"{major}{minor}"


def trim_native_libs(wheel: Path, keep: str) -> None:
    """Rewrite bitsandbytes' wheel with the native library for `keep` ('cuda130') and the CPU one only; its
    RECORD lists what stays. Refuses when the wheel has no library for `keep`."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dropped = {n for n in names if (m := _CUDA_LIB.search(n)) and m.group(1) != keep}
        if not any(n.endswith(f"libbitsandbytes_{keep}.so") for n in names):
            raise TunelabError(f"no libbitsandbytes_{keep}.so in it: the image's CUDA is not one this release "
                               "supports", file=wheel)
        items = [(i, z.read(i.filename)) for i in z.infolist() if i.filename not in dropped]
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for info, data in items:
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if line.split(b",", 1)[0].decode() not in dropped)
            out.writestr(info, data)
    tmp.replace(wheel)


def tree_bytes(root: Path = ROOT) -> int:
    """The working tree a call sends: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / f.decode()).stat().st_size for f in listed if f and (root / f.decode()).is_file())


def prepare(have_file: Path, out: Path, target: Target, cuda: str | None = None,
            extras: tuple[str, ...] = EXTRAS) -> Carry:
    """The carry folder `out` (its wheels and manifest.json) for the image whose `pip freeze` is have_file;
    `extras`: tunelab's extras carried too (qlora: bitsandbytes)."""
    cuda = cuda or image_cuda(parse_freeze(have_file.read_text(), file=have_file))
    with tempfile.TemporaryDirectory(prefix="gpu-lease-") as tmp:
        work = Path(tmp)
        plan, resolved, _ = plan_wheelhouse(have_file, target, extras, ROOT, work, leave_out=NOT_FOR_TRAINING)
        wanted = {w.name: w for w in plan.wheels if w.name != plan.root}
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        files = download([r for r in resolved if r.name in wanted], target, out, work)
    if cuda and "bitsandbytes" in files:
        trim_native_libs(files["bitsandbytes"], f"cuda{cuda}")
    carried = [CarriedWheel(w.name, w.version, files[n].name, files[n].stat().st_size, sha256(files[n]),
                            f"{w.why}: {w.detail}") for n, w in sorted(wanted.items())]
    size = sum(w.bytes for w in carried)
    tree = tree_bytes()
    carry = Carry(target.python, target.platform, cuda, carried,
                  [f"{n}: the training rows never import it" for n in NOT_FOR_TRAINING], tree, tree + size)
    (out / MANIFEST).write_text(json.dumps(asdict(carry), indent=1) + "\n")
    return carry

