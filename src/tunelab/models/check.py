"""Check a local Hugging Face model directory before any job depends on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclass(frozen=True)
class ModelInfo:
    path: str
    model_type: str
    layers: int | None
    hidden: int | None
    vocab_size: int | None
    weights_bytes: int
    has_chat_template: bool


def check_model_dir(path: str | Path) -> ModelInfo:
    """config.json, weights (safetensors or bin) and a tokenizer must be there; raise naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise TunelabError("model directory not found", file=path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise TunelabError("no config.json: not a Hugging Face model directory", file=path)
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise TunelabError(f"config.json is not valid JSON: {exc}", file=cfg_file) from None
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.name.startswith(("model", "pytorch_model"))]
    if not weights:
        raise TunelabError("no model weights (model*.safetensors or pytorch_model*.bin)", file=path)
    empty = [p.name for p in weights if p.stat().st_size == 0]
    if empty:
        raise TunelabError(f"empty weight file(s) {empty}", file=path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise TunelabError(f"no tokenizer ({' or '.join(TOKENIZER_FILES)})", file=path)
    tok_cfg = {}
    if (path / "tokenizer_config.json").is_file():
        tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    has_chat = bool(tok_cfg.get("chat_template")) or (path / "chat_template.jinja").is_file()
    text_cfg = config.get("text_config", config)
    return ModelInfo(
        path=str(path),
        model_type=str(config.get("model_type", "unknown")),
        layers=text_cfg.get("num_hidden_layers"),
        hidden=text_cfg.get("hidden_size"),
        vocab_size=text_cfg.get("vocab_size"),
        weights_bytes=sum(p.stat().st_size for p in weights),
        has_chat_template=has_chat,
    )


def eval_only_base(checkpoint: Path, named_base: Path | None, field: str) -> Path:
    """The base model of an eval-only checkpoint: a full model dir is its own base; an adapter's base is
    the model the spec names, else its adapter_config's base_model_name_or_path when that is a local dir."""
    if not checkpoint.is_dir():
        raise TunelabError("eval_only checkpoint not found", file=checkpoint, field=field)
    adapter_cfg = checkpoint / "adapter_config.json"
    if not adapter_cfg.is_file():
        if (checkpoint / "config.json").is_file():
            return checkpoint
        raise TunelabError("neither a PEFT adapter (adapter_config.json) nor a model (config.json)",
                           file=checkpoint, field=field)
    if named_base is not None:
        return named_base
    try:
        base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as exc:
        raise TunelabError(f"adapter_config.json is not valid JSON: {exc}", file=adapter_cfg) from None
    if base and (Path(base) / "config.json").is_file():
        return Path(base)
    raise TunelabError(f"the adapter's base '{base}' is not a local model directory: name one of `models` "
                       f"with {field}.model", file=checkpoint, field=field)
