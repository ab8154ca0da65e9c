"""A local HF causal LM (+ optional LoRA adapter) for evaluation: batched generation (greedy, or seeded sampling, see
decoding.py) with optional log-probabilities, and log-probabilities of given continuations.

An evaluation of a checkpoint gives the same answer every time (the model's generation_config never turns sampling on);
rows are left-padded and masked, so on fp32 an answer does not depend on its batch-mates. Weights are cached per (base,
adapter, dtype, device) so several tasks on one checkpoint load it once."""

from __future__ import annotations

import gc
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio

from tunelab.errors import TunelabError
from tunelab.evaluate.decoding import Sampling, cut_at_stop, seeded_sampler
from tunelab.faults import kill_point
from tunelab.host.device import merges_adapters
from tunelab.models.vlm import is_vision_language, load_vlm

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel

# Weights loaded by this process: base models and adapters (the evaluation benchmark compares the counts).
WEIGHT_LOADS: Counter[str] = Counter()
_GATHER_STEP_S = 0.005  # how often the batch leader looks for more requests
_GATHER_QUIET_S = 0.02  # stop gathering once no request arrived for this long


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # (token, logprob), most likely first


@dataclass(frozen=True)
class Generation:
    new_ids: list[int]
    text: str
    hit_stop: bool
    logprobs: list[TokenLogprob] | None = None


def tokenizer_dir(base_path: str | Path, adapter_path: str | Path | None) -> Path:
    """Where a target's tokenizer comes from: the adapter dir when training saved one there, else the base."""
    if adapter_path is not None and (Path(adapter_path) / "tokenizer_config.json").is_file():
        return Path(adapter_path)
    return Path(base_path)


def check_model_dirs(base_path: str | Path, adapter_path: str | Path | None) -> None:
    base = Path(base_path)
    if not (base / "config.json").is_file():
        raise TunelabError("base model directory not found (no config.json)", file=base)
    if adapter_path is not None and not (Path(adapter_path) / "adapter_config.json").is_file():
        raise TunelabError("not a PEFT adapter directory (no adapter_config.json)", file=Path(adapter_path))


def load_model(base_path: str | Path, adapter_path: str | Path | None, dtype: Any, device: str,
               merge: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer). The tokenizer comes from the adapter dir when training saved one there. `merge`: the
    adapter merged into the base where merging pays (merging.py; a pass's merge is the same sum)."""
    from transformers import AutoTokenizer

    check_model_dirs(base_path, adapter_path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(base_path, adapter_path))
    model: PreTrainedModel | PeftModel = load_base(base_path, tokenizer, dtype, resize=adapter_path is not None)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path))
        WEIGHT_LOADS["adapter"] += 1
        if merge and merges_adapters(device):
            try:
                model = model.merge_and_unload(safe_merge=True)
            except ValueError:  # weights that are not finite: PEFT's unmerged path answers, as before merging
                return load_model(base_path, adapter_path, dtype, device)
    # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to), which mypy reads as an unbound
    # function (the device taken for `self`)
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    cpu_kernel(model)
    return model, tokenizer


def cpu_kernel(model: Any) -> None:
    """A model on a CPU gets its linear layers by the faster float32 kernel here (models/cpu_linear.py, which leaves
    a model on another device alone): a prompt's prefill is matrix products."""
    from tunelab.models.cpu_linear import accelerate

    accelerate(model)


def load_base(base_path: str | Path, tokenizer: Any, dtype: Any, resize: bool) -> Any:
    """The base model's weights (a VLM's through its own class); with `resize` (an adapter goes on it), its
    embeddings grown to the tokenizer's vocabulary when training added tokens. Counted in WEIGHT_LOADS."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    base = Path(base_path)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a tqdm bar per load would garble the sweep's progress display
    try:
        load = load_vlm if is_vision_language(base) else AutoModelForCausalLM.from_pretrained
        model = load(base, dtype=dtype)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    WEIGHT_LOADS["base"] += 1
    # transformers types the input embeddings as any nn.Module; a causal LM's are an nn.Embedding
    embeddings = cast("torch.nn.Embedding", model.get_input_embeddings())
    if resize and len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


class LocalLM:
    """Loaded weights + tokenizer, and the two things evaluation asks of them."""

    # prompt ids by (PromptFormat, messages), where weights serve several targets that ask the same prompts
    # (shared.SharedWeights: a sweep's targets of one base); None: not kept (one target asks each prompt once)
    prompts: dict[Any, list[int]] | None = None

    def __init__(self, model: Any, tokenizer: Any, device: str):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise TunelabError("the tokenizer has neither a pad nor an eos token", file=tokenizer.name_or_path)

    def _left_padded(self, rows: list[list[int]]) -> tuple[Any, Any]:
        import torch

        width = max(len(p) for p in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, p in enumerate(rows):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int],
                       top_logprobs: int | None = None, *, sampling: Sampling | None = None,
                       seeds: list[int] | None = None, stop_seqs: tuple[str, ...] = ()) -> list[Generation]:
        """Decode a batch, each row cut at its first stop token or sequence; greedy unless `sampling` (row i seeded with
        seeds[i]). top_logprobs: None none; 0 the chosen token's; k also the k most likely."""
        import torch

        kill_point("eval.generate")  # the fault benchmark: mid-evaluation
        ids, mask = self._left_padded(prompts)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, **vision_inputs(prompts, ids, self.device),
                                      **self._generate_args(max_new_tokens, stop_ids, top_logprobs is not None,
                                                            sampling, seeds, stop_seqs))
        new = out.sequences[:, ids.shape[1]:].tolist()
        logps = torch.stack(out.logits, 1).float().log_softmax(-1) if top_logprobs is not None else None
        return [self.generation(tokens, stop_ids, stop_seqs, logps[row] if logps is not None else None, top_logprobs)
                for row, tokens in enumerate(new)]

    def generation(self, tokens: list[int], stop_ids: list[int], stop_seqs: tuple[str, ...], logps: Any,
                   top_logprobs: int | None) -> Generation:
        """One row's answer, cut at its first stop token then stop sequence; its log-probabilities given `logps`."""
        cut = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
        kept, text, hit_seq = cut_at_stop(tokens if cut is None else tokens[:cut], self._decode, stop_seqs)
        lp = self._token_logprobs(logps, kept, top_logprobs) if logps is not None else None
        return Generation(kept, text, cut is not None or hit_seq, lp)

    def adapter_args(self, rows: int) -> dict[str, Any]:
        """Extra arguments of a forward pass over `rows` rows: none here (SharedWeights names each row's adapter)."""
        return {}

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _generate_args(self, max_new_tokens: int, stop_ids: list[int], logits: bool, sampling: Sampling | None,
                       seeds: list[int] | None, stop_seqs: tuple[str, ...]) -> dict[str, Any]:
        """model.generate's arguments. HF's own sampling is never on: a seeded sampler (a logits processor)
        picks each sampled token, so the model's generation_config cannot turn greedy into sampling."""
        from transformers import GenerationConfig
        from transformers.generation import StopStringCriteria

        args: dict[str, Any] = dict(generation_config=GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stop_ids,
            pad_token_id=self.pad_id, return_dict_in_generate=True, output_logits=logits))
        if sampling is not None:
            if seeds is None:
                raise TunelabError("sampling needs one seed per row")
            args["logits_processor"] = [seeded_sampler(sampling, seeds, self.device)]
        if stop_seqs:  # stops a row early; the text is cut at the stop sequence afterwards
            args["stopping_criteria"] = [StopStringCriteria(self.tokenizer, list(stop_seqs))]
        return args

    def _token_logprobs(self, logps: Any, tokens: list[int], k: int | None) -> list[TokenLogprob]:
        out = []
        for pos, tok in enumerate(tokens):
            top: tuple[tuple[str, float], ...] = ()
            if k:
                values, idx = logps[pos].topk(k)
                top = tuple((self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, idx))
            out.append(TokenLogprob(tok, self.tokenizer.decode([tok]), float(logps[pos, tok]), top))
        return out

    def continuation_logprobs(self, prompt: list[int], continuations: list[list[int]]) -> list[float]:
        """Summed log-probability of each continuation after the prompt, in one right-padded pass."""
        import torch

        if not prompt or any(not c for c in continuations):
            raise TunelabError("cannot score an empty prompt or an empty continuation")
        rows = [prompt + c for c in continuations]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        repeated = [prompt] * len(rows)  # each row shows the prompt's images (if any) once
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                **vision_inputs(repeated, ids.to(self.device), self.device),
                                **self.adapter_args(len(rows))).logits
        logps = logits.float().log_softmax(-1).cpu()
        start = len(prompt)
        sums = []
        for row, cont in enumerate(continuations):
            positions = torch.arange(start - 1, start - 1 + len(cont))  # position t predicts token t + 1
            sums.append(float(logps[row, positions, torch.tensor(cont)].sum()))
        return sums


def vision_inputs(prompts: list[Any], ids: Any, device: str) -> dict[str, Any]:
    """A VLM's extra inputs for a batch whose prompts carry pixels (data.images.VisionPrompt): every image's
    patches and grid rows in row order, and the image-token marks M-RoPE reads; nothing for text prompts."""
    import torch

    with_pixels = [p for p in prompts if getattr(p, "pixel_values", None) is not None]
    if not with_pixels:
        return {}
    token = with_pixels[0].image_token_id
    return {"pixel_values": torch.cat([p.pixel_values for p in with_pixels]).to(device),
            "image_grid_thw": torch.cat([p.image_grid_thw for p in with_pixels]).to(device),
            "mm_token_type_ids": (ids == token).long()}


# ---------------------------------------------------------------- weights cache
_CACHE: dict[tuple, LocalLM] = {}


def local_lm(base_path: str | Path, adapter_path: str | Path | None, dtype: Any, device: str) -> LocalLM:
    """The loaded model for these weights; one set is kept (a new one replaces it)."""
    key = (str(base_path), str(adapter_path) if adapter_path else None, str(dtype), device)
    if key not in _CACHE:
        release_weights()
        _CACHE[key] = LocalLM(*load_model(base_path, adapter_path, dtype, device, merge=True), device)
    return _CACHE[key]


def release_weights() -> None:
    """Drop the cached weights; a full collection runs only when a dropped model outlives its last reference."""
    if not _CACHE:
        return

    import torch

    dropped = [weakref.ref(lm.model) for lm in _CACHE.values()]
    _CACHE.clear()
    if any(model() is not None for model in dropped):
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- batching concurrent requests
@dataclass(frozen=True)
class BatchSettings:
    """What every row of one batch shares (requests with other settings wait for a batch of their own)."""

    max_new_tokens: int
    top_logprobs: int | None = None
    sampling: Sampling | None = None
    stop_seqs: tuple[str, ...] = ()


@dataclass
class _Request:
    prompt_ids: list[int]
    settings: BatchSettings
    seed: int | None  # the row's generator seed when sampling
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Generation | None = None
    error: BaseException | None = None


class Batcher:
    """Groups concurrent generate() calls into one batched forward pass.

    No background task: whichever waiting caller holds the lock lets samples queue for a moment and runs the next batch;
    rows are sorted by tokens (and seeds), so the batch does not depend on the order inspect delivers them."""

    def __init__(self, run_batch: Any, batch_size: int):
        self._run_batch = run_batch  # (prompts, seeds, BatchSettings) -> list[Generation]
        self._batch_size = max(1, batch_size)
        self._pending: list[_Request] = []
        self._lock: anyio.Lock | None = None  # made inside the eval's event loop, on first use

    async def submit(self, prompt_ids: list[int], settings: BatchSettings, seed: int | None = None) -> Generation:
        req = _Request(prompt_ids, settings, seed)
        self._pending.append(req)
        if self._lock is None:
            self._lock = anyio.Lock()
        while not req.done.is_set():
            async with self._lock:
                if req.done.is_set():
                    break
                await self._gather()
                self._run_next()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    async def _gather(self) -> None:
        quiet = 0.0
        seen = len(self._pending)
        while len(self._pending) < self._batch_size and quiet < _GATHER_QUIET_S:
            await anyio.sleep(_GATHER_STEP_S)
            quiet = 0.0 if len(self._pending) > seen else quiet + _GATHER_STEP_S
            seen = len(self._pending)

    def _run_next(self) -> None:
        head = self._pending[0].settings
        batch = [r for r in self._pending if r.settings == head][: self._batch_size]
        self._pending = [r for r in self._pending if not any(r is b for b in batch)]
        batch.sort(key=lambda r: (len(r.prompt_ids), r.prompt_ids, r.seed or 0))
        try:
            # Inline on the event loop, not in a worker thread: on CPU a worker thread gets its own
            # OpenMP team and contends with the loop's, slowing every batch. Nothing else
            # needs the loop meanwhile: every sample waits on us.
            seeds = [r.seed for r in batch] if head.sampling is not None else None
            results = self._run_batch([r.prompt_ids for r in batch], seeds, head)
        except Exception as exc:  # each caller in the batch raises it from its own submit()
            deliver(batch, error=exc)
            return
        deliver(batch, results)


def deliver(batch: list[_Request], results: list[Generation] | None = None, error: Exception | None = None) -> None:
    """Wake each caller of a batch with its answer, or with the batch's error (raised from its own submit())."""
    for i, r in enumerate(batch):
        if error is not None:
            r.error = error
        else:
            assert results is not None
            r.result = results[i]
        r.done.set()
