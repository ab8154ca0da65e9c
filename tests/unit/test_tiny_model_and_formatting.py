import hashlib

import pytest

from tunelab.data.formatting import PromptFormat
from tunelab.errors import TunelabError
from tunelab.models.check import check_model_dir
from tunelab.models.tiny import build_tiny_model


def _sha(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_tiny_model_is_deterministic_and_reloads_offline(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = build_tiny_model(tmp_path / "again", layers=2, hidden=128, seed=0)
    other = build_tiny_model(tmp_path / "other", layers=2, hidden=128, seed=1)
    assert _sha(again) == _sha(tiny_model) != _sha(other)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    assert tok.decode(tok("Zebra café")["input_ids"]) == "Zebra café"
    info = check_model_dir(tiny_model)
    assert info.has_chat_template and info.layers == 2 and info.hidden == 128


def _example(word: str, template: str = "Capitalize: {input}", system: str | None = None):
    from tunelab.data.rows import RowReader

    return RowReader("fields", template, system_prompt=system).example({"input": word, "output": word.capitalize()},
                                                                       "test row")


def test_chat_format_masks_only_the_answer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    fmt = PromptFormat()
    ex = _example("apple")
    prompt = fmt.encode_prompt(ex.prompt, tok)
    assert tok.decode(prompt) == "<|bos|><|user|>Capitalize: apple<|eot|><|assistant|>"
    enc = fmt.encode_example(ex, tok)
    answer = [i for i, m in zip(enc["input_ids"], enc["completion_mask"]) if m]
    assert tok.decode(answer) == "Apple<|eot|>"
    assert enc["input_ids"][: len(prompt)] == prompt and sum(enc["completion_mask"][: len(prompt)]) == 0
    plain = PromptFormat(chat_template="never")
    plain_ids = plain.encode_prompt(_example("apple", "Capitalize: {input}\n").prompt, tok)
    assert tok.decode(plain_ids, skip_special_tokens=True) == "Capitalize: apple\n"
    with_system = _example("x", "{input}", system="Be brief.")
    assert tok.decode(fmt.encode_prompt(with_system.prompt, tok)).startswith("<|bos|><|system|>Be brief.<|eot|>")
    assert PromptFormat(train_on_input=True).encode_example(ex, tok)["completion_mask"] == [1] * len(enc["input_ids"])


@pytest.mark.parametrize("remove, words", [("config.json", "no config.json"), ("model.safetensors", "no model weights"),
                                           ("tokenizer.json", "no tokenizer")])
def test_check_model_dir_names_what_is_missing(tmp_path, tiny_model, remove, words):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    (copy / remove).unlink()
    with pytest.raises(TunelabError, match=words):
        check_model_dir(copy)
    with pytest.raises(TunelabError, match="model directory not found"):
        check_model_dir(tmp_path / "absent")


def test_an_answer_that_also_occurs_in_the_prompt_is_the_answer(tiny_model):
    """'1' appears in the prompt '1 0 1' too: the loss must sit on the answer after the prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ex = _example("1 0 1", "Parity of {input}")
    ex = type(ex)(ex.messages[:-1] + (type(ex.messages[-1])("assistant", "1"),))
    enc = PromptFormat().encode_example(ex, tok)
    prompt = PromptFormat().encode_prompt(ex.prompt, tok)
    assert enc["input_ids"][: len(prompt)] == prompt
    assert tok.decode([i for i, m in zip(enc["input_ids"], enc["completion_mask"]) if m]) == "1<|eot|>"
