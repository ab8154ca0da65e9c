"""inspect-ai's GenerateConfig as the tunelab provider honours it: greedy or seeded sampling.

Every field is honoured by the provider (HONOURED), handled by inspect-ai itself or without effect on the answers
(INSPECT_HANDLES), or refused when set, naming it — any field a later inspect-ai adds included: a setting silently
dropped would make a score mean something other than what the task file says.

Sampling happens when temperature > 0 (or top_p/top_k alone: temperature 1). Each answer draws from its own generator
seeded from the config's seed, the sample and epoch, the prompt and the choice index, so an answer does not depend on
its batch-mates or the order inspect delivers samples, and a rerun gives the same answers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluate.inspect_internals import sample_state

DEFAULT_SEED = 0
HONOURED = frozenset({"max_tokens", "temperature", "top_p", "top_k", "seed", "stop_seqs", "num_choices",
                      "logprobs", "top_logprobs"})
INSPECT_HANDLES = frozenset({"max_retries", "timeout", "attempt_timeout", "stream_idle_timeout", "max_connections",
                             "adaptive_connections", "system_message", "cache", "max_tool_output", "fail_on_refusal",
                             "batch", "cache_prompt", "reasoning_history"})
_NO_EFFECT = {"frequency_penalty": 0, "presence_penalty": 0, "best_of": 1}  # set, but to what changes nothing


@dataclass(frozen=True)
class Sampling:
    """Temperature sampling, optionally nucleus (top_p) and top-k; seed: the config's (or the default)."""

    temperature: float
    top_p: float | None = None
    top_k: int | None = None
    seed: int = DEFAULT_SEED

    def describe(self) -> str:
        parts = [f"temperature={self.temperature:g}"]
        parts += [f"top_p={self.top_p:g}"] if self.top_p is not None else []
        parts += [f"top_k={self.top_k}"] if self.top_k is not None else []
        return "sampling, " + ", ".join([*parts, f"seed={self.seed}"])


def describe(sampling: Sampling | None) -> str:
    """How tokens are chosen, as the log records it: 'greedy' or 'sampling, temperature=…, seed=…'."""
    return sampling.describe() if sampling else "greedy"


def unsupported_settings(config: Any) -> list[str]:
    """'name=value' of each GenerateConfig field that is set and that the provider cannot honour."""
    out = []
    for name in type(config).model_fields:
        value = getattr(config, name)
        if name in HONOURED or name in INSPECT_HANDLES or value is None or value in ({}, [], _NO_EFFECT.get(name)):
            continue
        out.append(f"{name}={value!r}")
    return out


def check_generate_config(config: Any, where: str = "") -> None:
    """Refuse what cannot be honoured, and out-of-range values, naming the setting."""
    at = f"{where}: " if where else ""
    refused = unsupported_settings(config)
    if refused:
        raise TunelabError(f"{at}the tunelab model provider cannot honour GenerateConfig {', '.join(refused)} "
                           "(local HF generation has no such option); remove "
                           f"{'it' if len(refused) == 1 else 'them'} from the task's config")
    checks = [("temperature", config.temperature, lambda v: v >= 0, "0 or more"),
              ("top_p", config.top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
              ("top_k", config.top_k, lambda v: v >= 1, "1 or more"),
              ("num_choices", config.num_choices, lambda v: v >= 1, "1 or more"),
              ("max_tokens", config.max_tokens, lambda v: v >= 1, "1 or more")]
    for name, value, ok, want in checks:
        if value is not None and not ok(value):
            raise TunelabError(f"{at}GenerateConfig {name}={value!r} must be {want}")
    if any(not s for s in config.stop_seqs or []):
        raise TunelabError(f"{at}GenerateConfig stop_seqs has an empty stop sequence")


def sampling_of(config: Any) -> Sampling | None:
    """None (greedy) unless the config asks for sampling."""
    temperature = config.temperature
    if temperature is None and (config.top_p is not None or config.top_k is not None):
        temperature = 1.0  # top_p/top_k alone mean sampling at the usual temperature, as in HF and OpenAI
    if not temperature:
        return None
    return Sampling(float(temperature), config.top_p, config.top_k,
                    DEFAULT_SEED if config.seed is None else int(config.seed))


def current_sample() -> list[Any] | None:
    """[sample id, epoch] of the inspect sample being generated for (None outside one: answers are then seeded
    by prompt and choice alone). inspect-ai has no public accessor: inspect_internals.sample_state."""
    state = sample_state()
    return None if state is None else [str(state.sample_id), int(state.epoch)]


def row_seed(seed: int, prompt_ids: list[int], choice: int, sample: list[Any] | None) -> int:
    """The generator seed of one answer: the same inputs give the same seed in any process."""
    key = json.dumps([seed, sample, choice, prompt_ids]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1  # fits torch's int64 seed


def seeded_sampler(sampling: Sampling, seeds: list[int], device: str) -> Any:
    """A logits processor that samples each row with its own generator and leaves only that token
    possible, so HF's greedy step picks it (the raw logits, hence logprobs, stay the model's own)."""
    import torch
    from transformers.generation import LogitsProcessor

    warpers = _warpers(sampling)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    class SeededSampler(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for w in warpers:
                scores = w(input_ids, scores)
            probs = scores.float().softmax(-1)
            picked = torch.full_like(scores, float("-inf"))
            for row, gen in enumerate(generators):
                token = torch.multinomial(probs[row], 1, generator=gen)
                picked[row, token] = 0.0
            return picked

    return SeededSampler()


def row_sampler(samplings: list[Sampling | None], seeds: list[int | None], device: str) -> Any:
    """seeded_sampler for rows that decode differently: sampled rows draw as it does, greedy (None) keep logits."""
    import torch
    from transformers.generation import LogitsProcessor

    rows = [(row, _warpers(s), torch.Generator(device=device).manual_seed(seed))
            for row, (s, seed) in enumerate(zip(samplings, seeds)) if s is not None and seed is not None]
    if len(rows) != sum(s is not None for s in samplings):
        raise TunelabError("sampling needs one seed per sampled row")

    class RowSampler(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            out = scores.clone()
            for row, warpers, gen in rows:
                own = scores[row: row + 1]
                for w in warpers:
                    own = w(input_ids[row: row + 1], own)
                token = torch.multinomial(own.float().softmax(-1)[0], 1, generator=gen)
                out[row] = float("-inf")
                out[row, token] = 0.0
            return out

    return RowSampler()


def _warpers(sampling: Sampling) -> list[Any]:
    from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers: list[Any] = [TemperatureLogitsWarper(sampling.temperature)]
    warpers += [TopKLogitsWarper(sampling.top_k)] if sampling.top_k is not None else []
    warpers += [TopPLogitsWarper(sampling.top_p)] if sampling.top_p is not None else []
    return warpers


def cut_at_stop(tokens: list[int], decode: Any, stop_seqs: tuple[str, ...]) -> tuple[list[int], str, bool]:
    """(tokens up to the one completing the first stop sequence, the text before it, whether found). The text is cut
    from the whole decoded answer: a token prefix may end inside a multi-byte character."""
    text = decode(tokens)
    found = [(text.index(s), s) for s in stop_seqs if s in text]
    if not found:
        return tokens, text, False
    at, stop = min(found)
    through = text[: at + len(stop)]
    k = next((k for k in range(1, len(tokens) + 1) if decode(tokens[:k]).startswith(through)), len(tokens))
    return tokens[:k], text[:at], True
