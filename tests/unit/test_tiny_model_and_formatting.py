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


def test_chat_format_masks_only_the_answer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    fmt = PromptFormat("Capitalize: {input}")
    assert fmt.render("apple", tok) == "<|bos|><|user|>Capitalize: apple<|eot|><|assistant|>"
    ex = fmt.encode_example("apple", "Apple", tok)
    answer = [i for i, m in zip(ex["input_ids"], ex["completion_mask"]) if m]
    assert tok.decode(answer) == "Apple<|eot|>"
    assert ex["input_ids"][: len(fmt.encode_prompt("apple", tok))] == fmt.encode_prompt("apple", tok)
    plain = PromptFormat("Capitalize: {input}\n", chat_template="never")
    assert plain.render("apple", tok) == "Capitalize: apple\n"
    with_system = PromptFormat("{input}", system_prompt="Be brief.")
    assert with_system.render("x", tok).startswith("<|bos|><|system|>Be brief.<|eot|>")


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
