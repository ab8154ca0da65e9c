"""`tunelab models random`: a model directory with a real model's exact architecture and random weights.

The config is a catalog model's (or a local config.json), `--layers K` keeping the first K layers. The tokenizer is
tiny.py's byte-level one padded to the real vocabulary with bos/eos at the real ids, so memory and speed per token are
the real model's (token counts of text are not). Weights are streamed a chunk at a time (models/weights.py), so a 70B
model is built without holding it. `weights=False` leaves them to be drawn on the device that trains
(`draw_random_model`) instead of writing and reading back gigabytes."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.compat import quiet_hf_progress_bars
from tunelab.errors import TunelabError
from tunelab.models.architectures import KNOWN_FACTS, known_facts, known_key
from tunelab.models.builddir import move_into_place, new_build_dir, usual_modes
from tunelab.models.random_vl import shallow_vlm_config, vl_processor
from tunelab.models.tiny import build_tokenizer
from tunelab.models.tiny_vl import FAMILIES
from tunelab.models.vision import is_vision_config
from tunelab.models.vlm_architectures import VLM_CONFIGS
from tunelab.models.weights import ITEM_BYTES, SHARD_BYTES, TensorPlan, tensor_plans, write_weights

PROVENANCE_FILE = "tunelab_random.json"
DTYPES = tuple(ITEM_BYTES)
DROPPED_KEYS = ("quantization_config", "auto_map", "_name_or_path", "transformers_version")
WRITTEN, DRAWN_AT_LOAD = "written", "drawn at load"


@dataclass(frozen=True)
class Source:
    name: str  # the catalog name, or the config.json's path
    config: dict[str, Any]  # the real model's config.json
    origin: str  # "catalog", or the config.json's sha256


@dataclass(frozen=True)
class Provenance:
    arch: str
    origin: str
    layers: int
    real_layers: int
    seed: int
    dtype: str
    parameters: int
    files: list[str]
    tunelab_version: str
    torch_version: str
    transformers_version: str
    builder: str = "tunelab.models.random_init"
    weights: str = WRITTEN  # WRITTEN, or DRAWN_AT_LOAD (no weight files: draw_random_model)


@dataclass(frozen=True)
class RandomBuild:
    path: Path
    provenance: Provenance
    seconds: float


def known_names() -> str:
    return ", ".join([f.name for f in KNOWN_FACTS] + list(VLM_CONFIGS))


def resolve_source(arch: str | Path) -> Source:
    """A local config.json (the file, or a directory holding one) or a catalog model by name."""
    path = Path(arch).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunelabError("no config.json in this directory: give a model directory, a config.json or a "
                               f"known model ({known_names()})", file=path)
        path = path / "config.json"
    if path.is_file():
        text = path.read_bytes()
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TunelabError(f"not valid JSON: {exc}", file=path) from None
        if not isinstance(config, dict) or "model_type" not in config:
            raise TunelabError("not a transformers config.json (no model_type)", file=path)
        return Source(str(path), config, hashlib.sha256(text).hexdigest())
    known = known_facts(str(arch))
    vlm = next((name for name in VLM_CONFIGS if name.lower() == known_key(str(arch))), None)
    if vlm is not None:
        return Source(vlm, VLM_CONFIGS[vlm] | {}, "catalog")
    if known is None:
        raise TunelabError(f"'{arch}' is neither a config.json, a directory holding one, nor a known model "
                           f"({known_names()})", field="--arch")
    return Source(known.name, known.to_config(), "catalog")


def shallow_config(config: dict[str, Any], layers: int | None, dtype: str) -> dict[str, Any]:
    """The config.json to write: the real one with its first `layers` layers (all by default) and `dtype`."""
    if dtype not in DTYPES:
        raise TunelabError(f"unknown dtype {dtype!r}: use {', '.join(DTYPES)}", field="--dtype")
    if "text_config" in config:
        raise TunelabError("a multimodal config (text_config): give the text model's own config.json", field="--arch")
    real = config.get("num_hidden_layers")
    if not isinstance(real, int):
        raise TunelabError("config.json has no num_hidden_layers", field="--arch")
    layers = real if layers is None else layers
    if not 1 <= layers <= real:
        raise TunelabError(f"must be between 1 and {real}, the model's depth (got {layers})", field="--layers")
    out = {k: v for k, v in config.items() if k not in DROPPED_KEYS}
    out["num_hidden_layers"] = layers
    if isinstance(out.get("layer_types"), list):
        out["layer_types"] = out["layer_types"][:layers]
    out["torch_dtype"] = dtype
    return out


def meta_model(config: dict[str, Any], dtype: str = "bfloat16"):
    """The causal LM (a VLM: image-text-to-text) of `config`, every tensor on `meta`: its shapes, no memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    # a deep copy: transformers 5 rewrites a rope_scaling dict in place (adds rope_theta to it)
    kwargs = copy.deepcopy({k: v for k, v in config.items()
                            if k not in ("model_type", "architectures", "torch_dtype", "dtype")})
    try:
        hf = AutoConfig.for_model(config["model_type"], **kwargs)
        with torch.device("meta"):
            auto = AutoModelForImageTextToText if is_vision_config(config) else AutoModelForCausalLM
            return auto.from_config(hf, dtype=getattr(torch, dtype))
    except (ValueError, KeyError, TypeError) as exc:
        raise TunelabError(f"transformers cannot build a model from this config: {exc}", field="--arch") from None


def _tokenizer(config: dict[str, Any]):
    eos = config.get("eos_token_id")  # a list in some configs: the first ends a turn
    first = eos[0] if isinstance(eos, list) and eos else eos
    first_eos = None if first is None or isinstance(first, list) else int(first)
    return build_tokenizer(int(config["vocab_size"]), config.get("bos_token_id"), first_eos,
                           model_max_length=int(config.get("max_position_embeddings") or 2048), unk_token="<|pad|>")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TunelabError("exists and is not a directory", file=out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise TunelabError("exists and is not empty: use another --out, or --force to replace it", file=out)


def build_random_model(arch: str | Path, out_dir: str | Path, layers: int | None = None, dtype: str = "bfloat16",
                       seed: int = 0, force: bool = False,
                       progress: Callable[[int, int], None] = lambda _done, _total: None,
                       shard_bytes: int = SHARD_BYTES, weights: bool = True) -> RandomBuild:
    """Write the random-init model dir; `progress(bytes_written, bytes_total)` as weights are written.
    weights=False: no weights (a text model only; `draw_random_model` draws them where the model is used)."""
    start = time.monotonic()
    source = resolve_source(arch)
    out = Path(out_dir)
    if is_vision_config(source.config):  # Qwen-VL: nested config, processor files (models/random_vl.py)
        if not weights:
            raise TunelabError("a vision-language model is built with its weights", field="weights")
        shallow_config(source.config["text_config"], layers, dtype)  # the checks of --layers and --dtype
        return _build_vlm(source, out, layers, WeightSpec(dtype, seed, 0.02, shard_bytes), force, progress, start)
    config = shallow_config(source.config, layers, dtype)
    _check_out(out, force)

    quiet_hf_progress_bars()
    plans = tensor_plans(meta_model(config, dtype))
    tokenizer = _tokenizer(config)
    record = write_build(out, force, config, [_generation_config(config, tokenizer), tokenizer], plans,
                         WeightSpec(dtype, seed, float(config.get("initializer_range") or 0.02), shard_bytes,
                                    weights),
                         progress, lambda files: _provenance(source, config, seed, dtype,
                                                             sum(p.numel for p in plans), files, weights=weights))
    return RandomBuild(out, record, time.monotonic() - start)


def _build_vlm(source: Source, out: Path, layers: int | None, spec: WeightSpec, force: bool,
               progress: Callable[[int, int], None], start: float) -> RandomBuild:
    """A Qwen-VL source: the nested config cut to `layers`, the family's tokenizer and image processor."""
    from transformers import GenerationConfig

    if source.config.get("model_type") not in FAMILIES:
        raise TunelabError(f"model type {source.config.get('model_type')} is not one tunelab builds "
                           f"({', '.join(FAMILIES)})", field="--arch")
    config = shallow_vlm_config({k: v for k, v in source.config.items() if k not in DROPPED_KEYS}, layers,
                                spec.dtype)
    _check_out(out, force)

    quiet_hf_progress_bars()
    plans = tensor_plans(meta_model(config, spec.dtype))
    tokenizer, image_processor = vl_processor(config)
    text = config["text_config"]
    generation = GenerationConfig(bos_token_id=text.get("bos_token_id"), eos_token_id=text.get("eos_token_id"),
                                  pad_token_id=tokenizer.pad_token_id, do_sample=False)
    real = int(source.config["text_config"]["num_hidden_layers"])
    record = write_build(out, force, config, [generation, tokenizer, image_processor], plans, spec, progress,
                         lambda files: _provenance(source, text, spec.seed, spec.dtype,
                                                   sum(p.numel for p in plans), files, real_layers=real))
    return RandomBuild(out, record, time.monotonic() - start)


@dataclass(frozen=True)
class WeightSpec:
    """How the weights are drawn and laid out: dtype, seed, std of the normal draws, shard size."""

    dtype: str
    seed: int
    std: float
    shard_bytes: int
    written: bool = True  # False: no weight files (drawn at load)


def write_build(out: Path, force: bool, config: dict[str, Any], savers: list[Any], plans: list[TensorPlan],
                spec: WeightSpec, progress: Callable[[int, int], None],
                record_of: Callable[[list[str]], Provenance]) -> Provenance:
    """The model dir, built beside `out` and moved into place: config.json, what each saver's save_pretrained
    writes (tokenizer, processor, generation config), the weights, and the provenance record."""
    tmp = new_build_dir(out)
    try:
        total = sum(p.numel for p in plans) * ITEM_BYTES[spec.dtype]
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            progress(done[0], total)

        progress(0, total)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for saver in savers:
            saver.save_pretrained(tmp)
        files = (write_weights(tmp, plans, spec.dtype, spec.seed, spec.std, advance, spec.shard_bytes)
                 if spec.written else [])
        record = record_of(files)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(asdict(record), indent=2) + "\n")
        usual_modes(tmp)
        move_into_place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _generation_config(config: dict[str, Any], tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=config.get("bos_token_id"), eos_token_id=config.get("eos_token_id"),
                            pad_token_id=tokenizer.pad_token_id, do_sample=False)


def _provenance(source: Source, config: dict[str, Any], seed: int, dtype: str, parameters: int,
                files: list[str], real_layers: int | None = None, weights: bool = True) -> Provenance:
    import torch
    import transformers

    return Provenance(arch=source.name, origin=source.origin, layers=int(config["num_hidden_layers"]),
                      real_layers=real_layers or int(source.config["num_hidden_layers"]), seed=seed, dtype=dtype, parameters=parameters, files=files,
                      tunelab_version=__version__, torch_version=torch.__version__,
                      transformers_version=transformers.__version__, weights=WRITTEN if weights else DRAWN_AT_LOAD)


def drawn_at_load(model_dir: str | Path) -> bool:
    """Whether `model_dir` is a random build without weights (build_random_model(weights=False))."""
    record = Path(model_dir) / PROVENANCE_FILE
    return record.is_file() and json.loads(record.read_text()).get("weights") == DRAWN_AT_LOAD


def draw_random_model(model_dir: str | Path, device: str, dtype: Any, seed: int = 0, **kwargs: Any):
    """The causal LM of a build without weights, drawn on `device` in `dtype` as transformers initializes a new model
    (the distribution `write_weights` writes): no host copy, no disk. kwargs: from_config's."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    if (Path(model_dir) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    return model
