"""`tunelab init` in a terminal: the plan-runs questions in order, with what is on disk as choices; the draft is planned
and shown, and written only when confirmed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import questionary as q

from tunelab.catalog import GPUS
from tunelab.errors import TunelabError
from tunelab.init.answers import DEFAULTS, InitAnswers, default_name, parse_level
from tunelab.init.discover import find_datasets, find_models, is_model_dir

OTHER = "another path…"


def _require(answer: Any) -> Any:
    """questionary returns None when the user presses Ctrl-C: stop, writing nothing."""
    if answer is None:
        raise TunelabError("cancelled: nothing written")
    return answer


def _int(text: str) -> bool | str:
    return text.strip().isdigit() and int(text) >= 0 or "a whole number, please"


def _pick_paths(q, what: str, found: list[Path], exists: Callable[[Path], bool]) -> list[Path]:
    """Checkbox of what was found (first pre-selected), or a typed path when none or 'another path…'."""
    chosen: list[str] = []
    if found:
        choices = [q.Choice(str(p), checked=i == 0) for i, p in enumerate(found)] + [q.Choice(OTHER)]
        chosen = _require(q.checkbox(f"{what} (space selects, enter confirms):", choices=choices,
                                     validate=lambda xs: bool(xs) or "choose at least one").ask())
    paths = [Path(c) for c in chosen if c != OTHER]
    if not found or OTHER in chosen:
        typed = _require(q.path(f"{what}: path", validate=lambda t: exists(Path(t).expanduser())
                                or "not found").ask())
        paths.append(Path(typed).expanduser())
    return paths


CPU_CHOICE = "none: plan for this machine's CPU"


def ask_answers(out: Path, model_roots: list[Path], data_root: Path, gpu_known: bool) -> InitAnswers:
    """The plan-runs conversation (questionary): returns the answers, writes nothing. Asks for the jobs' GPU when none
    is detected or named (a login node is not where jobs run); every default is the flags' (answers.DEFAULTS)."""
    vary_keys = _require(q.checkbox(
        "What do you want to vary? (several models or datasets: choose them below)",
        choices=[q.Choice(k, checked=k in DEFAULTS.vary) for k in DEFAULTS.levels]).ask())
    vary = {}
    for key in vary_keys:
        text = _require(q.text(f"Levels of {key} (comma-separated):", default=DEFAULTS.levels[key],
                               validate=lambda t: len([v for v in t.split(",") if v.strip()]) >= 1
                               or "at least one level").ask())
        vary[key] = [parse_level(v) for v in text.split(",") if v.strip()]
    models = _pick_paths(q, "Base models", find_models(model_roots), is_model_dir)
    datasets = _pick_paths(q, "Datasets", find_datasets(data_root), Path.is_file)
    prompt = _require(q.text("Prompt template ('{input}' is the row's input; empty for chat or "
                             "prompt/completion rows):", default=DEFAULTS.prompt).ask())
    gpus = int(_require(q.text("GPUs per run (0: CPU; 1: single device; more: distributed):",
                               default=str(DEFAULTS.gpus_per_run), validate=_int).ask()))
    gpu = None
    if gpus > 0 and not gpu_known:  # proposed: what no --gpu means, this machine's CPU
        gpu = _require(q.select("No GPU here: which GPU will the jobs run on?",
                                choices=[CPU_CHOICE, *(g.name for g in GPUS.values())]).ask())
        gpu = None if gpu == CPU_CHOICE else gpu
    validation = _require(q.confirm("Track validation loss during training?", default=DEFAULTS.validation).ask())
    controls = _require(q.confirm("Add controls (each base model evaluated without fine-tuning)?",
                                  default=DEFAULTS.controls).ask())
    epochs = DEFAULTS.epochs if "epochs" in vary else int(_require(q.text(
        "Epochs (1-3 suits most tasks):", default=str(DEFAULTS.epochs), validate=_int).ask()))
    name = _require(q.text("Experiment name:", default=default_name(out)).ask())
    return InitAnswers(name=name, models=models, datasets=datasets, vary=vary, gpus_per_run=gpus,
                       validation=validation, controls=controls, epochs=max(epochs, 1), prompt=prompt or None,
                       gpu=gpu)


def confirm_write(path: Path) -> bool:
    return bool(_require(q.confirm(f"Write {path}?", default=True).ask()))


def confirm_batch() -> bool:
    return bool(_require(q.confirm("Use the planner's micro-batch, accumulation and packing?", default=True).ask()))
