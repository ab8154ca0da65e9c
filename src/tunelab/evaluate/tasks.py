"""Inspect tasks built from a dataset split, with case-sensitive scorers.

inspect's built-in `exact()` and `includes()` normalise or ignore case; for a capitalization task
the case is the whole answer, so we score strictly ourselves.
"""

from __future__ import annotations

from collections.abc import Callable

from inspect_ai import Task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Scorer, Target, accuracy, scorer, stderr
from inspect_ai.solver import TaskState, generate

from tunelab.data.splits import load_splits
from tunelab.errors import TunelabError
from tunelab.runconfig import RunConfig


@scorer(metrics=[accuracy(), stderr()])
def exact_match() -> Scorer:
    """Correct when the stripped completion equals the stripped target, case included."""

    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion.strip()
        ok = any(answer == t.strip() for t in target.target)
        return Score(value=CORRECT if ok else INCORRECT, answer=answer)

    return score


@scorer(metrics=[accuracy(), stderr()])
def includes() -> Scorer:
    """Correct when the (case-sensitive) target appears anywhere in the completion."""

    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion
        ok = any(t.strip() and t.strip() in answer for t in target.target)
        return Score(value=CORRECT if ok else INCORRECT, answer=answer.strip())

    return score


SCORERS: dict[str, Callable[[], Scorer]] = {"exact_match": exact_match, "includes": includes}


def build_samples(cfg: RunConfig) -> list[Sample]:
    """One sample per example of the eval split: input/target are the raw fields, id the index."""
    splits = load_splits(cfg.dataset.path, cfg.dataset.input_field, cfg.dataset.output_field)
    rows = splits[cfg.eval.split]
    if cfg.eval.limit is not None:
        rows = rows[: cfg.eval.limit]
    return [
        Sample(input=row[cfg.dataset.input_field], target=row[cfg.dataset.output_field], id=i)
        for i, row in enumerate(rows)
    ]


def build_task(cfg: RunConfig) -> Task:
    """The inspect Task of a run's eval spec (task name, split, limit, max_tokens)."""
    if cfg.eval.task not in SCORERS:
        raise TunelabError(f"unknown eval task '{cfg.eval.task}'; use one of {sorted(SCORERS)}", field="eval.task")
    return Task(
        dataset=MemoryDataset(build_samples(cfg), name=f"{cfg.dataset.name}_{cfg.eval.split}"),
        solver=generate(),
        scorer=SCORERS[cfg.eval.task](),
        config=GenerateConfig(max_tokens=cfg.eval.max_tokens),
        name=cfg.eval.task,
    )
