"""Each run's attention resolved once, at plan time, into run.yaml (`training.attention`, per stage too): the job
and the memory estimate then read the same kernel, and plan.md says which and why."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from tunelab.estimate.peak import model_config_of
from tunelab.models.attention import AttentionChoice, resolve_attention
from tunelab.rundir.config import RunConfig
from tunelab.spec import TrainingConfig


@cache
def _model_config(path: str) -> dict[str, Any] | None:
    """The model's config.json, read once per plan however many runs share the model."""
    return model_config_of(path) if (Path(path) / "config.json").is_file() else None


def _resolved(t: TrainingConfig, model_path: str) -> tuple[TrainingConfig, AttentionChoice]:
    choice = resolve_attention(t.attention, t.packing, _model_config(model_path))
    return t.model_copy(update={"attention": choice.kind.value}), choice


def resolve_runs_attention(runs: list[RunConfig]) -> dict[str, list[AttentionChoice]]:
    """Write each run's (and stage's) resolved attention into its config; the choices by run, for plan.md."""
    choices: dict[str, list[AttentionChoice]] = {}
    for cfg in runs:
        if cfg.training is None:
            continue
        cfg.training, choice = _resolved(cfg.training, cfg.model.path)
        choices[cfg.name] = [choice]
        for stage in cfg.stages:
            stage.training, stage_choice = _resolved(stage.training, cfg.model.path)
            choices[cfg.name].append(stage_choice)
    return choices


def attention_notes(choices: dict[str, list[AttentionChoice]]) -> list[str]:
    """One line per distinct note (a fallback, a dense packed mask), naming the runs it concerns."""
    by_note: dict[str, list[str]] = {}
    for run, cs in choices.items():
        for c in cs:
            if c.note:
                runs = by_note.setdefault(f"attention {c.kind.value}: {c.note}", [])
                if run not in runs:
                    runs.append(run)
    return [f"{note} ({', '.join(runs)})" for note, runs in by_note.items()]
