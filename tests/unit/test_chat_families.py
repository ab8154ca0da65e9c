"""PromptFormat on the real chat templates of Llama-3.1/3.2, Qwen2.5, Mistral-7B v0.2/v0.3, Gemma-2/3, SmolLM2.

The templates are verbatim fixtures (tests/fixtures/chat_templates, provenance in tests/chat_families.py);
the tokenizers are small offline stand-ins with each family's special tokens. Every expectation below is
written out by hand from the template text, not taken from the formatter's own output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the helper module
from chat_families import FAMILIES, TEMPLATE_SHA256, build_tokenizer, verify_fixture

from tunelab.data.conversation import Example, Message
from tunelab.data.formatting import PromptFormat
from tunelab.errors import TunelabError

DATE = "01 Jan 2030"
FMT = PromptFormat(template_date=DATE)
U1, A1, U2, A2, SYS = "What is the capital of France?", "Paris.", "And of Italy?", "Rome.", "Be brief."

_LLAMA_HEAD = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
               "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2030\n\n")
_QWEN_SYS = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_SMOL_SYS = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# family: end-of-turn token, assistant header (how every prompt ends), what the answer tokens decode to
# (the template's separator, the answer, its end-of-turn token), and the single-turn prompt (no system).
SPEC = {
    "llama3.1": {
        "eot": "<|eot_id|>", "header": "<|start_header_id|>assistant<|end_header_id|>\n\n", "answer": "Paris.<|eot_id|>",
        "prompt": _LLAMA_HEAD + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
    "llama3.2": {
        "eot": "<|eot_id|>", "header": "<|start_header_id|>assistant<|end_header_id|>\n\n", "answer": "Paris.<|eot_id|>",
        "prompt": _LLAMA_HEAD + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
    "qwen2.5": {
        "eot": "<|im_end|>", "header": "<|im_start|>assistant\n", "answer": "Paris.<|im_end|>",
        "prompt": "<|im_start|>system\n" + _QWEN_SYS + "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
        "<|im_end|>\n<|im_start|>assistant\n"},
    "mistral_v0.2": {
        "eot": "</s>", "header": "[/INST]", "answer": " Paris.</s>",
        "prompt": "<s> [INST] What is the capital of France? [/INST]"},
    "mistral_v0.3": {
        "eot": "</s>", "header": "[/INST]", "answer": " Paris.</s>",
        "prompt": "<s>[INST] What is the capital of France?[/INST]"},
    "gemma2": {
        "eot": "<end_of_turn>", "header": "<start_of_turn>model\n", "answer": "Paris.<end_of_turn>",
        "prompt": "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"},
    "gemma3": {
        "eot": "<end_of_turn>", "header": "<start_of_turn>model\n", "answer": "Paris.<end_of_turn>",
        "prompt": "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"},
    "smollm2": {
        "eot": "<|im_end|>", "header": "<|im_start|>assistant\n", "answer": "Paris.<|im_end|>",
        "prompt": "<|im_start|>system\n" + _SMOL_SYS + "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
        "<|im_end|>\n<|im_start|>assistant\n"},
}

# Two assistant turns (with a system message where the template takes one): the whole rendering as
# (text, carries loss) segments.
_LLAMA_MULTI = [
    (_LLAMA_HEAD + "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?"
     "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", 0),
    ("Paris.<|eot_id|>", 1),
    ("<|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", 0),
    ("Rome.<|eot_id|>", 1)]
_CHATML_MULTI = [
    (("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
     "<|im_start|>assistant\n"), 0),
    ("Paris.<|im_end|>", 1),
    ("\n<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n", 0),
    ("Rome.<|im_end|>", 1)]
MULTI = {
    "llama3.1": (True, _LLAMA_MULTI),
    "llama3.2": (True, _LLAMA_MULTI),
    "qwen2.5": (True, _CHATML_MULTI),
    "smollm2": (True, _CHATML_MULTI),
    "mistral_v0.2": (True, [
        ("<s> [INST] Be brief.\n\nWhat is the capital of France? [/INST]", 0), (" Paris.</s>", 1),
        (" [INST] And of Italy? [/INST]", 0), (" Rome.</s>", 1)]),
    "mistral_v0.3": (False, [  # v0.3 moves a system message into the last user turn: see the test below
        ("<s>[INST] What is the capital of France?[/INST]", 0), (" Paris.</s>", 1),
        ("[INST] And of Italy?[/INST]", 0), (" Rome.</s>", 1)]),
    "gemma2": (False, [  # Gemma-2 refuses a system role
        ("<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n", 0),
        ("Paris.<end_of_turn>", 1),
        ("\n<start_of_turn>user\nAnd of Italy?<end_of_turn>\n<start_of_turn>model\n", 0), ("Rome.<end_of_turn>", 1)]),
    "gemma3": (True, [
        ("<bos><start_of_turn>user\nBe brief.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n", 0),
        ("Paris.<end_of_turn>", 1),
        ("\n<start_of_turn>user\nAnd of Italy?<end_of_turn>\n<start_of_turn>model\n", 0), ("Rome.<end_of_turn>", 1)]),
}
ALL = sorted(FAMILIES)


def _single() -> Example:
    return Example((Message("user", U1), Message("assistant", A1)))


def _multi(system: bool) -> Example:
    head = (Message("system", SYS),) if system else ()
    return Example((*head, Message("user", U1), Message("assistant", A1), Message("user", U2), Message("assistant", A2)))


def _runs(ids, mask, tok) -> list[tuple[str, int]]:
    """Decoded maximal runs of equal mask value."""
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            runs.append((tok.decode(ids[start:i]), mask[start]))
            start = i
    return runs


def _first_loss(mask) -> int:
    """Index where the last run of loss-carrying tokens starts (the last answer)."""
    i = len(mask)
    while i > 0 and mask[i - 1]:
        i -= 1
    return i


def test_fixture_templates_are_the_recorded_bytes():
    assert set(TEMPLATE_SHA256) == set(FAMILIES)
    for name in FAMILIES:
        assert verify_fixture(name) == TEMPLATE_SHA256[name], f"{name}.jinja changed: it must stay verbatim"


@pytest.mark.parametrize("name", ALL)
def test_single_turn_answer_prompt_and_stop_tokens(name):
    """(a) answer tokens = answer + the family's own end-of-turn token; (b) prompt = prefix; (c) header; (d) stop."""
    tok, spec = build_tokenizer(name), SPEC[name]
    enc = FMT.encode_example(_single(), tok)
    ids, mask = enc["input_ids"], enc["completion_mask"]
    assert len(ids) == len(mask)
    answer = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(answer) == spec["answer"]
    assert tok.convert_ids_to_tokens(answer[-1]) == spec["eot"]
    assert answer == ids[_first_loss(mask):]  # one contiguous answer at the end
    prompt = FMT.encode_prompt(_single().prompt, tok)
    assert prompt == ids[:_first_loss(mask)]
    assert tok.decode(prompt) == spec["prompt"]
    assert tok.decode(prompt).endswith(spec["header"])
    stops = FMT.stop_token_ids(tok)
    assert tok.convert_tokens_to_ids(spec["eot"]) in stops and tok.eos_token_id in stops
    # the prompt's BOS, where the family has one, is there exactly once (the template writes it, not the tokenizer)
    if tok.bos_token and FAMILIES[name].add_bos:
        assert prompt.count(tok.bos_token_id) == 1 and prompt[0] == tok.bos_token_id


@pytest.mark.parametrize("name", ALL)
def test_multi_turn_both_answers_carry_loss(name):
    """(e) two assistant turns carry loss (with their end-of-turn tokens); system and user turns carry none."""
    tok = build_tokenizer(name)
    system, segments = MULTI[name]
    ex = _multi(system)
    enc = FMT.encode_example(ex, tok)
    assert _runs(enc["input_ids"], enc["completion_mask"], tok) == segments
    prompt = FMT.encode_prompt(ex.prompt, tok)
    assert prompt == enc["input_ids"][:_first_loss(enc["completion_mask"])]
    assert tok.decode(prompt) == "".join(text for text, _ in segments[:-1])
    assert tok.decode(prompt).endswith(SPEC[name]["header"])


@pytest.mark.parametrize("chunk", [256, 3])  # 3: every call's texts cut across examples
@pytest.mark.parametrize("name", ALL)
def test_examples_encoded_in_one_batch_each_keep_their_own_pieces(name, chunk, monkeypatch):
    """encode_examples tokenizes the pieces of many examples in a call per kind and chunk: each example still gets
    its own answers and prompts (written out above), whatever its neighbours' lengths and piece counts, in chat
    mode and in plain text (whose prompt piece asks for the tokenizer's own BOS, the other kind of call)."""
    from tunelab.data import formatting

    monkeypatch.setattr(formatting, "TOKENIZE_CHUNK", chunk)
    tok, spec = build_tokenizer(name), SPEC[name]
    system, segments = MULTI[name]
    batch = FMT.encode_examples([_single(), _multi(system), _single(), _multi(system)], tok)
    for enc in batch[0::2]:
        answer = [i for i, m in zip(enc["input_ids"], enc["completion_mask"]) if m]
        assert tok.decode(answer) == spec["answer"]
        assert tok.decode(enc["input_ids"][:_first_loss(enc["completion_mask"])]) == spec["prompt"]
    for enc in batch[1::2]:
        assert _runs(enc["input_ids"], enc["completion_mask"], tok) == segments
    plain = PromptFormat(chat_template="never").encode_examples([_single(), _single()], tok)
    assert plain[0] == plain[1]
    assert tok.decode([i for i, m in zip(plain[0]["input_ids"], plain[0]["completion_mask"]) if not m]).endswith(U1)


@pytest.mark.parametrize("name", ["llama3.1", "llama3.2"])
def test_llama_date_line_is_pinned(name, monkeypatch):
    """(f) the date line shows the pinned date; two pinned dates differ only there; the day of the run doesn't matter."""
    import datetime as dt

    import transformers.utils.chat_template_utils as ctu

    tok = build_tokenizer(name)
    a = PromptFormat(template_date="01 Jan 2030").encode_example(_single(), tok)["input_ids"]
    b = PromptFormat(template_date="28 Feb 2031").encode_example(_single(), tok)["input_ids"]
    text_a, text_b = tok.decode(a), tok.decode(b)
    assert "\nToday Date: 01 Jan 2030\n\n" in text_a and "\nToday Date: 28 Feb 2031\n\n" in text_b
    assert text_a.replace("01 Jan 2030", "DATE") == text_b.replace("28 Feb 2031", "DATE")
    pre = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    post = next(i for i, (x, y) in enumerate(zip(a[::-1], b[::-1])) if x != y)
    assert tok.decode(a[:pre]).endswith(("Today Date:", "Today Date: "))  # same tokens up to the date...
    assert tok.decode(a[pre:len(a) - post]).strip() in "01 Jan 2030"  # ...only the date's tokens differ...
    assert tok.decode(b[pre:len(b) - post]).strip() in "28 Feb 2031"
    assert tok.decode(a[len(a) - post:]).startswith(tuple("0123456789\n"))  # ...and the same tokens after it

    class _Day:  # the template's strftime_now() reads datetime.now(): run "on" two different days
        day = dt.datetime(2025, 3, 4)

        @classmethod
        def now(cls, tz=None):
            return cls.day

    monkeypatch.setattr(ctu, "datetime", _Day)
    pinned, unpinned = [], []
    for day in (dt.datetime(2025, 3, 4), dt.datetime(2026, 11, 30)):
        _Day.day = day
        pinned.append(PromptFormat(template_date=DATE).encode_example(_single(), build_tokenizer(name))["input_ids"])
        unpinned.append(PromptFormat().encode_example(_single(), build_tokenizer(name))["input_ids"])
    assert pinned[0] == pinned[1] == a
    if name == "llama3.2":  # 3.2 prints today's date unless pinned; 3.1 falls back to a fixed "26 Jul 2024"
        assert unpinned[0] != unpinned[1] and "Today Date: 30 Nov 2026" in tok.decode(unpinned[1])
    else:
        assert unpinned[0] == unpinned[1] and "Today Date: 26 Jul 2024" in tok.decode(unpinned[0])


def test_llama_answer_ends_with_eot_even_when_eos_is_end_of_text():
    """(a) the end-of-turn token comes from the template, not from eos (base Llama-3 tokenizers: eos <|end_of_text|>)."""
    tok = build_tokenizer("llama3.1", eos="<|end_of_text|>")
    enc = FMT.encode_example(_single(), tok)
    answer = [i for i, m in zip(enc["input_ids"], enc["completion_mask"]) if m]
    assert tok.decode(answer) == "Paris.<|eot_id|>" and tok.eos_token == "<|end_of_text|>"
    assert FMT.stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|eot_id|>"), tok.eos_token_id]


@pytest.mark.parametrize("name", ALL)
def test_no_pad_token_needed(name):
    """(g) encoding never needs a pad token (Llama/Mistral ship none; training later sets pad = eos)."""
    tok = build_tokenizer(name, pad=None)
    assert tok.pad_token is None
    enc = FMT.encode_example(_single(), tok)
    assert enc == FMT.encode_example(_single(), build_tokenizer(name))
    tok.pad_token = tok.eos_token  # what the training code does
    assert FMT.encode_example(_single(), tok) == enc


@pytest.mark.parametrize("name", ALL)
def test_train_on_input_puts_loss_everywhere(name):
    """(h)"""
    tok = build_tokenizer(name)
    enc = PromptFormat(template_date=DATE, train_on_input=True).encode_example(_single(), tok)
    assert enc["completion_mask"] == [1] * len(enc["input_ids"])
    assert enc["input_ids"] == FMT.encode_example(_single(), tok)["input_ids"]


@pytest.mark.parametrize("name", ALL)
def test_chat_template_never_gives_plain_text(name):
    """(i) plain text on a chat tokenizer: the prompt with the tokenizer's BOS (where it adds one), answer + eos."""
    tok = build_tokenizer(name)
    fmt = PromptFormat(chat_template="never")
    bos = {"llama3.1": "<|begin_of_text|>", "llama3.2": "<|begin_of_text|>", "mistral_v0.2": "<s>",
           "mistral_v0.3": "<s>", "gemma2": "<bos>", "gemma3": "<bos>"}.get(name, "")  # Qwen, SmolLM2: none
    eos = {"llama3.1": "<|eot_id|>", "llama3.2": "<|eot_id|>", "qwen2.5": "<|im_end|>", "smollm2": "<|im_end|>",
           "mistral_v0.2": "</s>", "mistral_v0.3": "</s>", "gemma2": "<eos>", "gemma3": "<eos>"}[name]
    enc = fmt.encode_example(_single(), tok)
    assert _runs(enc["input_ids"], enc["completion_mask"], tok) == [(bos + U1, 0), ("Paris." + eos, 1)]
    prompt = fmt.encode_prompt(_single().prompt, tok)
    assert prompt == enc["input_ids"][:len(prompt)] and tok.decode(prompt) == bos + U1
    assert fmt.stop_token_ids(tok) == [tok.eos_token_id]


def test_gemma2_refuses_a_system_turn_with_a_clear_error():
    tok = build_tokenizer("gemma2")
    ex = Example((Message("system", SYS), Message("user", U1), Message("assistant", A1)))
    with pytest.raises(TunelabError, match="chat template refused the conversation: System role not supported"):
        FMT.encode_example(ex, tok)
    with pytest.raises(TunelabError, match="System role not supported"):
        FMT.encode_prompt(ex.prompt, tok)


def test_mistral_v03_system_message_moves_to_the_last_user_turn_and_is_refused():
    """The v3 template writes the system message into the LAST user turn only, so the conversation that
    training renders (the answer last) drops it while the evaluation prompt has it: refused, not mis-trained."""
    tok = build_tokenizer("mistral_v0.3")
    ex = Example((Message("system", SYS), Message("user", U1), Message("assistant", A1)))
    prompt = tok.decode(FMT.encode_prompt(ex.prompt, tok))
    assert prompt == "<s>[INST] Be brief.\n\nWhat is the capital of France?[/INST]"
    with pytest.raises(TunelabError, match="renders the prompt differently"):
        FMT.encode_example(ex, tok)


@pytest.mark.parametrize("name, answer", [
    ("qwen2.5", "Paris.\n<|im_end|>"), ("smollm2", "Paris.\n<|im_end|>"),  # ChatML writes the answer as is
    ("mistral_v0.2", " Paris.\n</s>"),
    ("llama3.2", "Paris.<|eot_id|>"), ("gemma3", "Paris.<end_of_turn>"), ("mistral_v0.3", " Paris.</s>"),  # trim
])
def test_answer_with_trailing_newline_keeps_its_end_of_turn_loss(name, answer):
    tok = build_tokenizer(name)
    ex = Example((Message("user", U1), Message("assistant", "Paris.\n")))
    enc = FMT.encode_example(ex, tok)
    assert tok.decode([i for i, m in zip(enc["input_ids"], enc["completion_mask"]) if m]) == answer
    assert FMT.encode_prompt(ex.prompt, tok) == enc["input_ids"][:_first_loss(enc["completion_mask"])]


@pytest.mark.parametrize("name", ["qwen2.5", "smollm2"])
def test_answer_with_leading_spaces_is_learned_whole(name):
    tok = build_tokenizer(name)
    ex = Example((Message("user", U1), Message("assistant", "  Paris.")))
    enc = FMT.encode_example(ex, tok)
    assert tok.decode([i for i, m in zip(enc["input_ids"], enc["completion_mask"]) if m]) == "  Paris.<|im_end|>"
    assert tok.decode(FMT.encode_prompt(ex.prompt, tok)).endswith("<|im_start|>assistant\n")
