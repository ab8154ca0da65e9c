"""The inspect-ai provider `tunelab-vllm/<base>:<adapter dir>`: inspect's own vLLM provider, sending the prompt exactly
as training built it.

inspect's `vllm/` lets the server apply the model's chat template, without the run's pinned date, system prompt or
prompt template. This subclass renders with `PromptFormat`, checks the text tokenizes back to those tokens, and sends it
through the server's pass-through template (vllm_server.py), so answers match the HF path."""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any

from inspect_ai.model import ChatMessage, ChatMessageUser, GenerateConfig, ModelOutput, modelapi
from inspect_ai.tool import ToolChoice, ToolInfo

from tunelab.data.conversation import Message, with_system
from tunelab.data.formatting import PromptFormat
from tunelab.errors import TunelabError
from tunelab.evaluate.decoding import check_generate_config, describe, sampling_of
from tunelab.evaluate.inspect_internals import VLLMAPI

PROVIDER = "tunelab-vllm"
# the prompt's token ids as the server tokenized them ("prompt") and each choice's generated ids ("choices"), of
# the response this generate() call got: a dict made by generate(), filled by on_response (a copied context still
# holds the same dict)
_TOKEN_IDS: ContextVar[dict[str, Any] | None] = ContextVar("tunelab_vllm_ids", default=None)


class TunelabVLLMAPI(VLLMAPI):
    """model_args: tokenizer_dir, prompt_template, system_prompt, chat_template, template_date, max_tokens,
    batch_size (recorded for the throughput history), base_url (the running server), and inspect's own."""

    def __init__(self, model_name: str, base_url: str | None = None, config: GenerateConfig = GenerateConfig(),
                 *, tokenizer_dir: str, prompt_template: str | None = None, system_prompt: str | None = None,
                 chat_template: Any = None, template_date: str | None = None, max_tokens: int | str = 16,
                 batch_size: int | str = 16, **kwargs: Any) -> None:
        from transformers import AutoTokenizer

        super().__init__(model_name, base_url=base_url, config=config, **kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.format = PromptFormat(chat_template=chat_template or "auto", template_date=template_date)
        self.prompt_template, self.system_prompt = prompt_template, system_prompt
        self.stop_ids = self.format.stop_token_ids(self.tokenizer)
        self._max_tokens, self.batch_size = int(max_tokens), int(batch_size)

    def _resolve_server(self) -> None:
        """inspect names the API by its base; the whole `<base>:<adapter>` name is kept for the log's usage."""
        name = self.model_name
        super()._resolve_server()
        self.model_name = name

    def prompt_ids(self, input: list[ChatMessage]) -> list[int]:
        out = []
        for m in input:
            if m.role not in ("system", "user", "assistant"):
                raise TunelabError(f"the tunelab-vllm provider cannot send a '{m.role}' message (no tool use)")
            out.append(Message(m.role, m.text))
        if self.prompt_template is not None:
            last = max((i for i, m in enumerate(out) if m.role == "user"), default=None)
            if last is None:
                raise TunelabError("the prompt template needs a user message to put the sample's input into")
            out[last] = Message("user", self.prompt_template.format(input=out[last].content))
        return self.format.encode_prompt(with_system(tuple(out), self.system_prompt), self.tokenizer)

    def prompt_text(self, ids: list[int]) -> str:
        """The prompt as the text the server tokenizes back to exactly `ids` (else one error saying so)."""
        text = str(self.tokenizer.decode(ids))
        if list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) != ids:
            raise TunelabError("this prompt's text does not tokenize back to the tokens training built, so the "
                               "vLLM server would not see them; evaluate with --engine hf",
                               file=Path(str(self.tokenizer.name_or_path)))
        return text

    def request_config(self, config: GenerateConfig) -> GenerateConfig:
        """The request's settings: the run's stop tokens, no special tokens added, greedy unless sampling."""
        sampling = sampling_of(config)
        extra = {**(config.extra_body or {}), "stop_token_ids": self.stop_ids, "skip_special_tokens": True,
                 "add_special_tokens": False, "add_generation_prompt": False, "return_token_ids": True}
        update: dict[str, Any] = {"extra_body": extra, "max_tokens": config.max_tokens or self._max_tokens}
        if sampling is None:
            update.update(temperature=0.0, top_p=None, top_k=None, seed=None)
        return config.model_copy(update=update)

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> Any:
        if tools:
            raise TunelabError("the tunelab-vllm provider cannot offer tools to the model")
        check_generate_config(config)
        ids = self.prompt_ids(input)
        got: dict[str, Any] = {}
        _TOKEN_IDS.set(got)
        result = await super().generate([ChatMessageUser(content=self.prompt_text(ids))], [], "none",
                                        self.request_config(config))
        output = result[0] if isinstance(result, tuple) else result
        seen = got.get("prompt")
        if seen is not None and list(seen) != ids:
            raise TunelabError(f"the vLLM server tokenized this prompt into other tokens than training built "
                               f"({len(seen)} against {len(ids)}); evaluate with --engine hf")
        if isinstance(output, ModelOutput):
            if not config.stop_seqs:  # vLLM cut text at a stop sequence itself: its text stands
                self._decode_as_hf(output, got.get("choices") or [])
            output.metadata = {**(output.metadata or {}), "prompt_ids": ids,
                               "decoding": describe(sampling_of(config))}
            if output.usage is not None:  # the prompt training built, as the HF path counts it
                output.usage.input_tokens = len(ids)
                output.usage.total_tokens = output.usage.input_tokens + output.usage.output_tokens
        return result

    def on_response(self, response: dict[str, Any]) -> None:
        got = _TOKEN_IDS.get()
        if got is not None:
            got.update(prompt=response.get("prompt_token_ids"),
                       choices=[c.get("token_ids") for c in response.get("choices") or []])

    def _decode_as_hf(self, output: ModelOutput, ids: list[list[int] | None]) -> None:
        """Each answer's text decoded from its tokens as the HF path decodes them (the whole answer at once: vLLM's
        incremental detokenizer drops a last incomplete UTF-8 sequence that HF writes as U+FFFD)."""
        counted = 0
        for choice, tokens in zip(output.choices, ids):
            if tokens is not None:
                ints = [int(t) for t in tokens]
                kept = ints[:next((i for i, t in enumerate(ints) if t in self.stop_ids), len(ints))]
                choice.message.content = str(self.tokenizer.decode(kept, skip_special_tokens=True))
                counted += len(kept)
        if output.choices:
            output.completion = output.choices[0].message.text  # a field, set when the output was made
        if output.usage is not None and ids and all(t is not None for t in ids):  # counted as HF counts: no stop
            output.usage.output_tokens = counted

    def max_tokens(self) -> int | None:
        return self._max_tokens


modelapi(name=PROVIDER)(TunelabVLLMAPI)
