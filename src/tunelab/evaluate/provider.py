"""The `tunelab` inspect-ai model provider: a local HF base model, optionally with a LoRA adapter.

Why our own provider and not inspect's `hf/`: the prompt must be built by
`PromptFormat.encode_prompt`, the very function training used, so the model is evaluated on
exactly the tokens it learned to continue (template, chat template, system prompt, BOS). The
sample's user message is the raw example input; everything else comes from the run config.

Decoding is always greedy (sampling settings in GenerateConfig are ignored): an evaluation of a
checkpoint must give the same answer every time it is run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from inspect_ai.model import (
    ChatMessage,
    ChatMessageUser,
    GenerateConfig,
    ModelAPI,
    ModelOutput,
    ModelUsage,
    modelapi,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from tunelab.data.formatting import ChatMode, PromptFormat
from tunelab.errors import TunelabError

PROVIDER = "tunelab"
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_TOKENS = 16
_GATHER_STEP_S = 0.005  # how often the batch leader looks for more requests
_GATHER_QUIET_S = 0.02  # stop gathering once no request arrived for this long


def resolve_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, device: str) -> Any:
    """Same rule as training ('auto' = bf16 on a bf16-capable GPU, else fp32), for parity."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(base_path: str | Path, adapter_path: str | Path | None, dtype: Any, device: str) -> tuple[Any, Any]:
    """(model, tokenizer). The tokenizer comes from the adapter dir when training saved one there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    base = Path(base_path)
    if not (base / "config.json").is_file():
        raise TunelabError("base model directory not found (no config.json)", file=base)
    tok_dir = base
    if adapter_path is not None:
        adapter = Path(adapter_path)
        if not (adapter / "adapter_config.json").is_file():
            raise TunelabError("not a PEFT adapter directory (no adapter_config.json)", file=adapter)
        if (adapter / "tokenizer_config.json").is_file():
            tok_dir = adapter
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a tqdm bar per load would garble the sweep's progress display
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        if adapter_path is not None:
            from peft import PeftModel

            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
            model = PeftModel.from_pretrained(model, str(adapter_path))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device)
    model.eval()
    return model, tokenizer


@dataclass
class _Request:
    prompt_ids: list[int]
    max_new_tokens: int
    done: anyio.Event = field(default_factory=anyio.Event)
    result: "_Generation | None" = None
    error: BaseException | None = None


@dataclass(frozen=True)
class _Generation:
    new_ids: list[int]
    text: str
    hit_eos: bool


class _Batcher:
    """Groups concurrent generate() calls into one batched forward pass.

    No background task: whichever waiting caller holds the lock lets concurrent samples queue up
    for a moment, cuts the next batch from the front of the queue and runs it. Within a batch,
    rows are sorted by their tokens, so the batch tensor does not depend on the order in which
    inspect happened to deliver the samples. Left padding is masked out, so on fp32 a prompt's
    answer does not depend on its batch-mates; batch_size=1 is the unbatched reference.
    """

    def __init__(self, run_batch: Any, batch_size: int):
        self._run_batch = run_batch
        self._batch_size = max(1, batch_size)
        self._pending: list[_Request] = []
        self._lock: anyio.Lock | None = None  # made inside the eval's event loop, on first use

    async def submit(self, prompt_ids: list[int], max_new_tokens: int) -> _Generation:
        req = _Request(prompt_ids, max_new_tokens)
        self._pending.append(req)
        if self._lock is None:
            self._lock = anyio.Lock()
        while not req.done.is_set():
            async with self._lock:
                if req.done.is_set():
                    break
                await self._gather()
                await self._run_next()
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

    async def _run_next(self) -> None:
        head = self._pending[0].max_new_tokens
        batch = [r for r in self._pending if r.max_new_tokens == head][: self._batch_size]
        self._pending = [r for r in self._pending if not any(r is b for b in batch)]
        batch.sort(key=lambda r: (len(r.prompt_ids), r.prompt_ids))
        try:
            # Inline on the event loop, not in a worker thread: on CPU a worker thread gets its own
            # OpenMP team and contends with the loop's (measured ~2x slower per batch, far worse
            # on a busy machine). Nothing else needs the loop meanwhile: every sample waits on us.
            results = self._run_batch([r.prompt_ids for r in batch], head)
        except Exception as exc:  # each caller in the batch raises it from its own submit()
            for r in batch:
                r.error = exc
                r.done.set()
            return
        for r, res in zip(batch, results):
            r.result = res
            r.done.set()


class TunelabModelAPI(ModelAPI):
    """inspect-ai provider `tunelab/<any name>`; model_args say which weights and prompt format.

    model_args: base_path (required), adapter_path, prompt_template ('{input}' by default),
    chat_template ('auto'|'always'|'never'), system_prompt, device (cuda if available else cpu),
    dtype ('auto'|'float32'|'bfloat16'|'float16'), batch_size. The weights are loaded once, here.
    """

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),
        *,
        base_path: str | None = None,
        adapter_path: str | None = None,
        prompt_template: str = "{input}",
        chat_template: ChatMode = "auto",
        system_prompt: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        if not base_path:
            raise TunelabError("the tunelab model provider needs model_args base_path", field="base_path")
        self.device = resolve_device(device)
        self.format = PromptFormat(template=prompt_template, chat_template=chat_template, system_prompt=system_prompt)
        self.model, self.tokenizer = load_model(base_path, adapter_path, resolve_dtype(dtype, self.device), self.device)
        self.batch_size = max(1, int(batch_size))
        self.eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        self._batcher = _Batcher(self.generate_batch, self.batch_size)

    def _eos_ids(self) -> list[int]:
        # Training appends tokenizer.eos_token_id; the model's generation config may add more
        # end-of-turn tokens (Llama 3: <|eot_id|>). Stop at any of them.
        ids: list[int] = []
        cfg_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for i in [self.tokenizer.eos_token_id, *(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos])]:
            if i is not None and i not in ids:
                ids.append(int(i))
        if not ids:
            raise TunelabError("the tokenizer has no eos token; cannot tell where an answer ends")
        return ids

    def prompt_ids(self, input_text: str) -> list[int]:
        """The prompt tokens for one example input: exactly what training used."""
        return self.format.encode_prompt(input_text, self.tokenizer)

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int) -> list[_Generation]:
        """Greedy-decode a batch of prompts, left-padded, stopping each row at its first eos."""
        import torch
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attention[row, width - len(p):] = 1
        gen_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=gen_config,
            )
        results = []
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            new = row if cut is None else row[:cut]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            results.append(_Generation(new_ids=new, text=text, hit_eos=cut is not None))
        return results

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        users = [m for m in input if isinstance(m, ChatMessageUser)]
        if not users:
            raise TunelabError("the tunelab provider needs a user message holding the example input")
        input_text = users[-1].text
        ids = self.prompt_ids(input_text)
        max_new = config.max_tokens or DEFAULT_MAX_TOKENS
        gen = await self._batcher.submit(ids, max_new)
        output = ModelOutput.from_content(
            model=self.model_name, content=gen.text, stop_reason="stop" if gen.hit_eos else "max_tokens"
        )
        output.usage = ModelUsage(
            input_tokens=len(ids), output_tokens=len(gen.new_ids), total_tokens=len(ids) + len(gen.new_ids)
        )
        # The exact prompt the model saw, so a log proves train/eval parity after the fact.
        output.metadata = {"prompt": self.tokenizer.decode(ids), "prompt_ids": ids}
        return output

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS

    def max_connections(self) -> int:
        # Two batches' worth of samples in flight: when one batch finishes, the next is queued.
        return 2 * self.batch_size

    def close(self) -> None:
        """Drop the weights (an 'all epochs' evaluation loads several models in a row)."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# Registered under the plain name so `get_model("tunelab/...")` finds it; the class itself stays
# importable (the decorator form would replace it with a factory function).
modelapi(name=PROVIDER)(TunelabModelAPI)
