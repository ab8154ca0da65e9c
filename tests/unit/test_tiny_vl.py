"""`tunelab models tiny-vl` and the vision formatting: real Qwen2.5-VL / Qwen3-VL chat templates (fixtures copied
from the installed trl/chat_templates, "Original Qwen2.5-VL / Qwen3-VL chat template"), image tokens counted by
hand, the evaluation prompt a token prefix of the training example, and a forward pass of the real architecture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jinja2
import pytest

from tunelab.data.conversation import Example, Message
from tunelab.data.formatting import PromptFormat
from tunelab.data.images import encode_vision_example, encode_vision_prompt
from tunelab.models.tiny_vl import build_tiny_vl
from tunelab.models.vlm import is_vision_language, load_vision_processor, load_vlm

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"
TEMPLATE = {"qwen2_5_vl": "qwen2.5-vl.jinja", "qwen3_vl": "qwen3-vl.jinja"}
SHA256 = {"qwen2.5-vl.jinja": "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb",
          "qwen3-vl.jinja": "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"}


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny_vl(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return request.param, build_tiny_vl(out / "model", arch=request.param, seed=1)


def _picture(path: Path, size: tuple[int, int]) -> str:
    from PIL import Image

    Image.new("RGB", size, (200, 10, 10)).save(path)
    return str(path)


def test_fixtures_are_pinned():
    for name, digest in SHA256.items():
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest


def test_template_is_the_real_one_and_renders_as_jinja_does(tiny_vl, tmp_path):
    arch, path = tiny_vl
    proc = load_vision_processor(path)
    fixture = (FIXTURES / TEMPLATE[arch]).read_text()
    assert proc.tokenizer.chat_template == fixture
    assert is_vision_language(path) and json.loads((path / "config.json").read_text())["model_type"] == arch
    image = _picture(tmp_path / "a.png", (56, 56))
    messages = (Message("user", "What colour?", (image,)), Message("assistant", "red"))
    ours = proc.tokenizer.apply_chat_template([{"role": m.role, "content": m.parts()} for m in messages],
                                              tokenize=False)
    direct = jinja2.Environment().from_string(fixture).render(
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
                  {"role": "assistant", "content": "red"}], add_generation_prompt=False)
    assert ours == direct and "<|vision_start|><|image_pad|><|vision_end|>What colour?" in ours


def test_image_tokens_by_hand_and_prompt_is_prefix(tiny_vl, tmp_path):
    import torch

    arch, path = tiny_vl
    proc = load_vision_processor(path)
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 56x56 -> smart resize to multiples of patch*merge (28 or 32): 56x56 or 64x64 -> a 4x4 patch grid -> 4 tokens.
    # 100x60 (w x h) at 28: round(100/28)*28=112, round(60/28)*28=56 -> grid 4x8 -> 32/4 = 8 tokens;
    # at 32: 96 x 64 -> grid 4 x 6 (patch 16) -> 24/4 = 6 tokens.
    wide = {"qwen2_5_vl": 8, "qwen3_vl": 6}[arch]
    images = (_picture(tmp_path / "a.png", (56, 56)), _picture(tmp_path / "b.png", (100, 60)))
    example = Example((Message("user", "Which is wider?", images), Message("assistant", "the second")))
    fmt = PromptFormat()
    enc = encode_vision_example(fmt, example, proc)
    assert enc["input_ids"].count(pad) == 4 + wide
    assert [int(torch.tensor(g).prod()) // 4 for g in enc["image_grid_thw"]] == [4, wide]
    prompt = encode_vision_prompt(fmt, example.prompt, proc)
    assert enc["input_ids"][: len(prompt.ids)] == prompt.ids
    answer = [t for t, m in zip(enc["input_ids"], enc["completion_mask"]) if m]
    assert proc.tokenizer.decode(answer) == "the second<|im_end|>"
    model = load_vlm(path, torch.float32)
    ids = torch.tensor([enc["input_ids"]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.tensor(enc["pixel_values"]),
                image_grid_thw=torch.tensor(enc["image_grid_thw"]), mm_token_type_ids=(ids == pad).int(), labels=ids)
    assert torch.isfinite(out.loss)


def test_same_seed_same_weights(tmp_path):
    a = build_tiny_vl(tmp_path / "a", seed=3)
    b = build_tiny_vl(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
