"""Which targets can share one pass (the same base weights and tokenizer, adapters PEFT can mix in a batch), which must
go one at a time and why, and how many adapters fit beside the base at once.

A group is every pending target with the same base directory, dtype, device and tokenizer (compared by what it is, not
by file bytes) and the same `modules_to_save` (PEFT routes a batch's wrapped modules through the active adapter's set).
What goes alone, with its reason: a vision-language model, an adapter kind PEFT cannot mix per row, and a target with
nothing to share."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.evaluate.hf import tokenizer_dir
from tunelab.evaluate.work import TargetWork
from tunelab.host.device import resolve_dtype
from tunelab.models.vlm import is_vision_language

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


@dataclass(frozen=True)
class Group:
    """Targets evaluated in one pass: one base load, each adapter beside it."""

    base_path: Path
    dtype: Any  # torch dtype
    device: str
    tokenizer_dir: Path
    resize: bool  # grow the base's embeddings to the tokenizer (adapters go on it), as one-at-a-time does
    members: tuple[TargetWork, ...]


@dataclass(frozen=True)
class Alone:
    """A target evaluated one at a time (evaluate/runner.py), and why."""

    work: TargetWork
    reason: str


@dataclass(frozen=True)
class _Key:
    base: Path
    dtype: str
    device: str
    tokenizer: str  # fingerprint
    aux: tuple[str, ...] | None  # an adapter's modules_to_save; None: no adapter


def group_targets(pending: list[TargetWork], device: str) -> tuple[list[Group], list[Alone]]:
    """Groups of two or more targets, in order of their first member; the rest alone, with reasons."""
    alone: list[Alone] = []
    buckets: dict[_Key, list[TargetWork]] = defaultdict(list)
    fingerprints: dict[str, tuple[str, int]] = {}
    tokenizers: dict[str, Path] = {}
    for work in pending:
        reason = mix_blocker(work)
        if reason:
            alone.append(Alone(work, reason))
            continue
        tok = tokenizer_dir(work.target.base_path, work.target.adapter_path)
        fingerprint, length = tokenizer_identity(tok, fingerprints)
        tokenizers.setdefault(fingerprint, tok)
        key = _Key(work.target.base_path.resolve(), str(_dtype(work, device)), device, fingerprint,
                   _modules_to_save(work.target.adapter_path) if work.target.adapter_path else None)
        if key.aux is None and length > _vocab_size(key.base):  # one-at-a-time loads a control unresized
            alone.append(Alone(work, f"its tokenizer ({length} tokens) is larger than the base model's vocabulary"))
            continue
        buckets[key].append(work)
    _join_controls(buckets)
    groups = []
    for key, members in buckets.items():
        if len(members) == 1:
            alone.append(Alone(members[0], _why_single(key, buckets)))
            continue
        groups.append(Group(key.base, _dtype(members[0], device), device, tokenizers[key.tokenizer],
                            any(m.target.adapter_path for m in members), tuple(members)))
    return groups, alone


def pass_of_one(work: TargetWork, device: str) -> Group:
    """A target alone as a pass of its own (onepass.py): it never mixes adapters, so any adapter kind goes."""
    target = work.target
    return Group(target.base_path.resolve(), _dtype(work, device), device,
                 tokenizer_dir(target.base_path, target.adapter_path), target.adapter_path is not None, (work,))


def _join_controls(buckets: dict[_Key, list[TargetWork]]) -> None:
    """Each bucket of base-only targets joins the largest bucket of adapters of its base, dtype and tokenizer."""
    for key in [k for k in buckets if k.aux is None]:
        peers = [k for k in buckets if k.aux is not None and dataclasses.replace(k, aux=None) == key]
        if peers:
            largest = max(peers, key=lambda k: len(buckets[k]))
            buckets[largest] = buckets.pop(key) + buckets[largest]


def _why_single(key: _Key, buckets: dict[_Key, list[TargetWork]]) -> str:
    others = [k for k in buckets if k.base == key.base and k != key]
    if not others:
        return "nothing to share: the only target of its base model"
    other = max(others, key=lambda k: len(buckets[k]))
    if other.tokenizer != key.tokenizer:
        return "its tokenizer differs from the other targets' of this base model"
    if other.dtype != key.dtype:
        return f"its dtype ({key.dtype}) differs from the other targets' ({other.dtype})"
    return f"its adapter's modules_to_save {list(key.aux or ())} differ from the others' {list(other.aux or ())}"


def mix_blocker(work: TargetWork) -> str | None:
    """Why this target cannot go into a mixed batch (None: it can)."""
    target = work.target
    if not (target.base_path / "config.json").is_file():
        return "its base model directory has no config.json"
    if is_vision_language(target.base_path):
        return "a vision-language model: image inputs are not batched across adapters"
    if target.adapter_path is None:
        return None
    try:
        config = json.loads((target.adapter_path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"its adapter_config.json cannot be read ({exc})"
    return adapter_blocker(config)


def adapter_blocker(config: dict[str, Any]) -> str | None:
    """Why PEFT cannot mix an adapter of this adapter_config.json with others in one batch (None: it can)."""
    from peft import LoraConfig

    kind = config.get("peft_type")
    if kind != "LORA":
        return f"a {kind} adapter: PEFT mixes adapters in one batch for LoRA only"
    for f in dataclasses.fields(LoraConfig):
        value = config.get(f.name)
        if (f.metadata.get("is_lora_variant") and value) or value in f.metadata.get("lora_variants", ()):
            return f"a LoRA variant ({f.name}={value!r}): PEFT does not mix it with other adapters in one batch"
    for name, what in (("target_parameters", "LoRA on parameters"), ("trainable_token_indices", "trainable tokens"),
                       ("layer_replication", "replicated layers"), ("alora_invocation_tokens", "activated LoRA")):
        if config.get(name):
            return f"{what} ({name}): PEFT does not mix it with other adapters in one batch"
    return None


def tokenizer_identity(directory: Path, seen: dict[str, tuple[str, int]]) -> tuple[str, int]:
    """(fingerprint, length) of this directory's tokenizer, loaded once per distinct set of files (`seen`)."""
    from transformers import AutoTokenizer

    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    files = digest.hexdigest()
    if files not in seen:
        tok = AutoTokenizer.from_pretrained(directory)
        backend = getattr(tok, "backend_tokenizer", None)
        parts = [type(tok).__name__, backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items())),
                 json.dumps(tok.chat_template, sort_keys=True, default=str),
                 json.dumps(tok.special_tokens_map, sort_keys=True, default=str), str(tok.padding_side), str(len(tok))]
        seen[files] = (hashlib.sha256("\n".join(parts).encode()).hexdigest(), len(tok))
    return seen[files]


def _modules_to_save(adapter: Path) -> tuple[str, ...]:
    config = json.loads((adapter / "adapter_config.json").read_text())
    return tuple(sorted(config.get("modules_to_save") or ()))


def _vocab_size(base: Path) -> int:
    config = json.loads((base / "config.json").read_text())
    return int(config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0)


def _dtype(work: TargetWork, device: str) -> Any:
    """The dtype the provider loads this target in (model_args_of: the run's training dtype, else auto)."""
    cfg = work.cfg
    return resolve_dtype(cfg.training.dtype if cfg.training is not None else "auto", device)


def chunks(sizes: list[int], room: int, most: int) -> list[list[int]]:
    """Consecutive indices of adapters whose bytes fit in `room` together, at most `most` (at least one)."""
    out: list[list[int]] = []
    used = 0
    for i, size in enumerate(sizes):
        if out and used + size <= room and len(out[-1]) < most:
            out[-1].append(i)
            used += size
        else:
            out.append([i])
            used = size
    return out
