"""The `tunelab` inspect-ai model provider: a local HF base model, optionally with a LoRA adapter.

Not inspect's `hf/`: prompts must be built by `PromptFormat.encode_prompt`, the very function training used, so a
checkpoint is evaluated on exactly the tokens it learned to continue and stops where training's answers stopped.
Built-in tasks send conversations already formatted; a task file's last user message goes into the prompt_template as
`{input}`. By hand: `inspect eval my_task.py --model tunelab/<run | checkpoint | control dir>`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    ContentImage,
    GenerateConfig,
    Logprob,
    Logprobs,
    ModelAPI,
    ModelOutput,
    ModelUsage,
    TopLogprob,
    modelapi,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from tunelab.data.conversation import Example, Message, with_system
from tunelab.data.formatting import ChatMode, PromptFormat
from tunelab.data.images import encode_vision_example, encode_vision_prompt
from tunelab.errors import TunelabError
from tunelab.evaluate.decoding import Sampling, check_generate_config, current_sample, describe, row_seed, sampling_of
from tunelab.evaluate.hf import Batcher, BatchSettings, Generation, LocalLM, load_model, local_lm
from tunelab.evaluate.mixbatch import AdapterQueue
from tunelab.evaluate.shared import AdapterView, shared_view
from tunelab.evaluate.targets import resolve_model_dir
from tunelab.host.device import resolve_device, resolve_dtype
from tunelab.models.vlm import is_vision_language, load_vision_processor
from tunelab.spec import template_fields

PROVIDER = "tunelab"
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_TOKENS = 16


def check_input_template(template: str | None, where: str) -> None:
    """A task file's samples have one text each: a template may only name {input}."""
    if template is None:
        return
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise TunelabError(f"{where}: prompt template {template!r} {exc}") from None
    other = [f for f in fields if f != "input"]
    if other:
        raise TunelabError(
            f"{where}: the prompt template {template!r} names field(s) {', '.join(other)}, but a task file's "
            "samples only give their input text ({input}); set `prompt:` on the task (e.g. prompt: '{input}'), "
            "or by hand pass -M prompt_template='{input}'")


class TunelabModelAPI(ModelAPI):
    """inspect-ai provider `tunelab/<name>`; model_args say which weights and prompt format.

    model_args: base_path (else model_name is a run/checkpoint/control directory), adapter_path, prompt_template (None:
    messages as they are), system_prompt, chat_template, template_date, train_on_input, device, dtype, batch_size,
    max_tokens (when the config sets none), cache_weights (False: load privately, e.g. a grader). GenerateConfig: see
    decoding.py; each output's metadata records `decoding`, `seed` and the generator seeds."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), *, base_path: str | None = None,
                 adapter_path: str | None = None, prompt_template: str | None = None,
                 system_prompt: str | None = None, chat_template: ChatMode | None = None,
                 template_date: str | None = None, train_on_input: bool | str = False, device: str | None = None,
                 dtype: str | None = None, batch_size: int | str = DEFAULT_BATCH_SIZE,
                 max_tokens: int | str = DEFAULT_MAX_TOKENS, cache_weights: bool | str = True,
                 min_pixels: int | str | None = None, max_pixels: int | str | None = None) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        if base_path is None:  # by hand: the model name is a directory of this experiment
            cfg, target = resolve_model_dir(model_name)
            base_path = str(target.base_path)
            adapter_path = adapter_path or (str(target.adapter_path) if target.adapter_path else None)
            prompt_template = prompt_template if prompt_template is not None else cfg.prompt
            system_prompt = system_prompt if system_prompt is not None else cfg.system_prompt
            chat_template = chat_template or cfg.chat_template
            template_date = template_date or cfg.chat_template_date
            train_on_input = bool(cfg.training and cfg.training.train_on_input)
            dtype = dtype or (cfg.training.dtype if cfg.training else "auto")
        check_input_template(prompt_template, f"model {model_name}")
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.format = PromptFormat(chat_template=chat_template or "auto", template_date=template_date,
                                   train_on_input=str(train_on_input).lower() in ("true", "1"))
        self.device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype or "auto", self.device)
        cached = str(cache_weights).lower() in ("true", "1")
        # a target of a one-pass evaluation (evaluate/onepass.py): the pass's shared weights, nothing loaded here
        view = shared_view(base_path, adapter_path, torch_dtype, self.device) if cached else None
        if view is not None:
            self.lm: LocalLM | AdapterView = view
        elif cached:
            self.lm = local_lm(base_path, adapter_path, torch_dtype, self.device)
        else:  # a grader beside the model under evaluation: the cache keeps that one
            self.lm = LocalLM(*load_model(base_path, adapter_path, torch_dtype, self.device, merge=True),
                              self.device)
        self.tokenizer = self.lm.tokenizer
        self.vision = vision_processor_of(base_path, self.tokenizer, min_pixels, max_pixels)  # None: a text model
        self.stop_ids = self.format.stop_token_ids(self.tokenizer)
        if not self.stop_ids:
            raise TunelabError("the tokenizer has no eos or end-of-turn token; cannot tell where an answer ends",
                               file=Path(base_path))
        self.batch_size = max(1, int(batch_size))
        self._max_tokens = int(max_tokens)
        self._batcher: Batcher | AdapterQueue = (
            view.queue(self.stop_ids) if view is not None else Batcher(self._run_batch, self.batch_size))

    # ---- prompt building ------------------------------------------------------------------------
    def messages_of(self, input: list[ChatMessage]) -> tuple[Message, ...]:
        """inspect messages → tunelab Messages: template on the last user turn, system prompt added."""
        out = []
        for m in input:
            if m.role not in ("system", "user", "assistant"):
                raise TunelabError(f"the tunelab provider cannot send a '{m.role}' message (no tool use)")
            out.append(Message(m.role, m.text, images_of(m)))
        if self.prompt_template is not None:
            last = max((i for i, m in enumerate(out) if m.role == "user"), default=None)
            if last is None:
                raise TunelabError("the prompt template needs a user message to put the sample's input into")
            out[last] = Message("user", self.prompt_template.format(input=out[last].content), out[last].images)
        return with_system(tuple(out), self.system_prompt)

    def prompt_ids(self, input: list[ChatMessage]) -> list[int]:
        """The prompt tokens: exactly what training built before the answer (a VLM's carry their pixels). Weights
        that serve several targets keep them: each prompt is formatted once per pass, not once per target."""
        messages = self.messages_of(input)
        kept = self.lm.prompts if self.vision is None else None
        if kept is None:
            return self._encode_prompt(messages)
        key = (self.format, messages)
        if key not in kept:
            kept[key] = self._encode_prompt(messages)
        return list(kept[key])

    def _encode_prompt(self, messages: tuple[Message, ...]) -> list[int]:
        if self.vision is not None:
            return encode_vision_prompt(self.format, messages, self.vision)
        return self.format.encode_prompt(messages, self.tokenizer)

    # ---- generation -----------------------------------------------------------------------------
    def _run_batch(self, prompts: list[list[int]], seeds: list[int] | None,
                   settings: BatchSettings) -> list[Generation]:
        return self.lm.generate_batch(prompts, settings.max_new_tokens, self.stop_ids, settings.top_logprobs,
                                      sampling=settings.sampling, seeds=seeds, stop_seqs=settings.stop_seqs)

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        if tools:
            raise TunelabError(f"the tunelab model provider cannot offer tools to the model "
                               f"({', '.join(t.name for t in tools)})")
        check_generate_config(config)
        ids = self.prompt_ids(input)
        want = bool(config.logprobs) or bool(config.top_logprobs)
        sampling = sampling_of(config)
        settings = BatchSettings(config.max_tokens or self._max_tokens, (config.top_logprobs or 0) if want else None,
                                 sampling, tuple(config.stop_seqs or ()))
        n = config.num_choices or 1
        seeds = [row_seed(sampling.seed, ids, i, current_sample()) for i in range(n)] if sampling else []
        if sampling:
            gens: list[Generation | None] = [None] * n

            async def one(i: int) -> None:
                gens[i] = await self._batcher.submit(ids, settings, seeds[i])

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
        else:  # greedy: every choice is the same answer
            gens = [await self._batcher.submit(ids, settings)] * n
        return self.output_of(ids, [g for g in gens if g is not None], want, sampling, seeds)

    def output_of(self, ids: list[int], gens: list[Generation], want: bool, sampling: Sampling | None,
                seeds: list[int]) -> ModelOutput:
        choices = [ChatCompletionChoice(
            message=ChatMessageAssistant(content=g.text, model=self.model_name, source="generate"),
            stop_reason="stop" if g.hit_stop else "max_tokens",
            logprobs=_inspect_logprobs(g) if want else None) for g in gens]
        output = ModelOutput(model=self.model_name, choices=choices)
        new = sum(len(g.new_ids) for g in gens)
        output.usage = ModelUsage(input_tokens=len(ids), output_tokens=new, total_tokens=len(ids) + new)
        output.input_context_tokens = len(ids)  # one request: its prompt is the context (inspect's own rule)
        # The exact prompt the model saw, so a log proves train/eval parity after the fact; how the
        # tokens were chosen, and with which seeds, so a sampled answer can be reproduced.
        output.metadata = {"prompt": self.tokenizer.decode(ids), "prompt_ids": ids, "decoding": describe(sampling)}
        if sampling:
            output.metadata.update(seed=sampling.seed, choice_seeds=seeds)
        return output

    # ---- scoring given continuations -------------------------------------------------------------
    def continuation_ids(self, messages: tuple[Message, ...], prompt: list[int], answer: str) -> list[int]:
        """The tokens training would learn for `answer` after these messages (with its end-of-turn)."""
        example = Example((*messages, Message("assistant", answer)))
        if self.vision is not None:
            ids = encode_vision_example(self.format, example, self.vision)["input_ids"]
        else:
            ids = self.format.encode_example(example, self.tokenizer)["input_ids"]
        if ids[: len(prompt)] != prompt:
            raise TunelabError(f"the answer {answer!r} changes how the prompt is tokenized; cannot score it")
        cont = ids[len(prompt):]
        stop = next((i for i, t in enumerate(cont) if t in self.stop_ids), None)
        return cont if stop is None else cont[: stop + 1]

    def score_continuations(self, input: list[ChatMessage], answers: list[str]) -> list[float]:
        """Summed log-probability of each answer (its tokens and its end-of-turn) after the prompt."""
        messages = self.messages_of(input)
        prompt = self._encode_prompt(messages)
        return self.lm.continuation_logprobs(prompt, [self.continuation_ids(messages, prompt, a) for a in answers])

    # ---- inspect settings ------------------------------------------------------------------------
    def max_tokens(self) -> int | None:
        return self._max_tokens

    def max_connections(self) -> int:
        # Two batches' worth of samples in flight: when one batch finishes, the next is queued.
        return 2 * self.batch_size

    def close(self) -> None:
        """The weights stay cached for the next task on them; hf.release_weights() frees them."""
        self.lm = None  # type: ignore[assignment]


def images_of(message: ChatMessage) -> tuple[str, ...]:
    """The images of an inspect message (ContentImage parts: a file path or a data URI), in order."""
    if isinstance(message.content, str):
        return ()
    return tuple(c.image for c in message.content if isinstance(c, ContentImage))


def vision_processor_of(base_path: str, tokenizer: Any, min_pixels: Any, max_pixels: Any) -> Any:
    """A VLM's processor around the tokenizer the provider already holds; None for a text model."""
    if not is_vision_language(base_path):
        return None
    lo, hi = (int(v) if v not in (None, "None", "") else None for v in (min_pixels, max_pixels))
    return replace(load_vision_processor(base_path, lo, hi), tokenizer=tokenizer)


def _inspect_logprobs(gen: Generation) -> Logprobs:
    return Logprobs(content=[
        Logprob(token=t.token, logprob=t.logprob,
                top_logprobs=[TopLogprob(token=s, logprob=v) for s, v in t.top] or None)
        for t in gen.logprobs or []])


def model_args_of(cfg: Any, target: Any, prompt_template: str | None, batch_size: int | None) -> dict[str, Any]:
    """The provider's model_args for one target of a run (RunConfig, targets.Target)."""
    return dict(
        base_path=str(target.base_path), adapter_path=str(target.adapter_path) if target.adapter_path else None,
        prompt_template=prompt_template, system_prompt=cfg.system_prompt, chat_template=cfg.chat_template,
        template_date=cfg.chat_template_date, train_on_input=bool(cfg.training and cfg.training.train_on_input),
        dtype=cfg.training.dtype if cfg.training is not None else "auto", batch_size=batch_size or DEFAULT_BATCH_SIZE,
        **({"min_pixels": cfg.training.min_pixels, "max_pixels": cfg.training.max_pixels} if cfg.training else {}))


# Registered under the plain name so `get_model("tunelab/...")` finds it; the class itself stays
# importable (the decorator form would replace it with a factory function). Also reached through the
# `inspect_ai` entry point (pyproject), which imports this module.
modelapi(name=PROVIDER)(TunelabModelAPI)
