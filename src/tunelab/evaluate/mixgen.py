"""One generate() call for rows that are different evaluations: each row with its own adapter, max_tokens, stop
sequences, sampling and log-probabilities (one pass, see shared.py).

Each row must get exactly the answer the one-at-a-time path (`hf.LocalLM.generate_batch`) gives it: the batch decodes to
the longest row's max_tokens and each row stops at its own, its stops checked on its own tokens, a sampled row drawing
from its own generator. What a batch must share is the set of stop tokens (HF pads a row after any of them), so rows are
batched by it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.evaluate.decoding import row_sampler
from tunelab.evaluate.hf import BatchSettings

BASE = "__base__"  # PEFT's name, in a mixed batch, for a row that uses no adapter (a control)


@dataclass(frozen=True)
class Row:
    """One answer to generate: its prompt, which adapter answers (BASE: none), and its own settings."""

    prompt_ids: list[int]
    adapter: str
    settings: BatchSettings
    seed: int | None = None  # its generator's seed when it samples


def generate_args(rows: list[Row], stop_ids: list[int], pad_id: int, tokenizer: Any, width: int,
                  device: str) -> dict[str, Any]:
    """model.generate's arguments for these rows (left-padded to `width`); sampled rows pick in the logits processor."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max(r.settings.max_new_tokens for r in rows), do_sample=False, num_beams=1,
        eos_token_id=stop_ids, pad_token_id=pad_id, return_dict_in_generate=True,
        output_logits=any(r.settings.top_logprobs is not None for r in rows))
    args: dict[str, Any] = {"generation_config": config, "stopping_criteria": [row_stops(rows, tokenizer, width)]}
    samplings = [r.settings.sampling for r in rows]
    if any(s is not None for s in samplings):
        args["logits_processor"] = [row_sampler(samplings, [r.seed for r in rows], device)]
    return args


def row_stops(rows: list[Row], tokenizer: Any, width: int) -> Any:
    """A stopping criterion that ends each row at its own max_tokens and at its own stop sequences."""
    import torch
    from transformers.generation import StoppingCriteria, StopStringCriteria

    limits = torch.tensor([r.settings.max_new_tokens for r in rows])
    by_stops: dict[tuple[str, ...], list[int]] = {}
    for i, r in enumerate(rows):
        if r.settings.stop_seqs:
            by_stops.setdefault(r.settings.stop_seqs, []).append(i)
    checks = [(torch.tensor(idx), StopStringCriteria(tokenizer, list(seqs))) for seqs, idx in by_stops.items()]

    class RowStops(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = (input_ids.shape[1] - width) >= limits.to(input_ids.device)
            for idx, check in checks:
                idx = idx.to(input_ids.device)
                done[idx] = done[idx] | check(input_ids[idx], scores)
            return done

    return RowStops()


def row_tokens(sequences: Any, width: int, rows: list[Row]) -> list[list[int]]:
    """Each row's new tokens, up to its own max_tokens."""
    new = sequences[:, width:].tolist()
    return [tokens[: r.settings.max_new_tokens] for tokens, r in zip(new, rows)]
