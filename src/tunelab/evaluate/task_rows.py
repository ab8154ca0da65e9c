"""A built-in task's rows, read and checked without inspect-ai: the split's examples, a choice task's options, a
numeric task's values. The plan checks every built-in task before any job starts; inspect-ai's import (1.5 s of a
cold plan's CPU here) is left to the evaluation that builds the Task from these rows (tasks.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunelab.data.conversation import Example
from tunelab.data.splits import load_data
from tunelab.errors import TunelabError
from tunelab.rundir.config import RunConfig
from tunelab.spec import TaskSpec


@dataclass(frozen=True)
class BuiltinRows:
    """What a built-in task runs on: its examples (limit applied), a choice task's options, a numeric task's values."""

    examples: list[Example]
    options: list[str] | None = None
    values: list[float] | None = None


def task_examples(cfg: RunConfig, spec: TaskSpec, limit: int | None) -> list[Example]:
    """The task's dataset split as Examples, read as training reads rows (template: the task's or the run's)."""
    try:
        dataset = cfg.dataset_named(spec.dataset)
    except KeyError:
        raise TunelabError(f"task '{spec.name}': dataset '{spec.dataset}' is not one of the spec's datasets",
                           field=f"eval.tasks.{spec.name}.dataset") from None
    loaded = load_data(dataset, cfg.experiment_dir)
    reader = loaded.reader(spec.prompt if spec.prompt is not None else cfg.prompt, cfg.system_prompt)
    return loaded.examples(spec.split, reader, limit)


def builtin_rows(cfg: RunConfig, spec: TaskSpec) -> BuiltinRows:
    """The rows of one built-in task spec on this run's datasets; raises what would stop its evaluation (no rows,
    an answer outside the options, a numeric answer that is not a number) as a TunelabError naming the task."""
    limit = spec.limit or cfg.eval.limit
    whole = spec.builtin == "choice" and not spec.options  # options come from the whole split
    split = task_examples(cfg, spec, None if whole else limit)
    examples = split[:limit] if limit else split
    if not examples:
        raise TunelabError(f"task '{spec.name}': the {spec.split} split has no rows")
    if spec.builtin == "choice":
        return BuiltinRows(examples, options=choice_options(spec, examples, split))
    if spec.builtin == "numeric":
        return BuiltinRows(examples, values=numeric_values(spec, examples))
    return BuiltinRows(examples)


def choice_options(spec: TaskSpec, examples: list[Example], split: list[Example]) -> list[str]:
    """task.options, or the distinct answers of the whole split (even when only `limit` samples run), sorted."""
    options = list(spec.options) if spec.options else sorted({e.answer for e in split})
    for i, e in enumerate(examples):
        if e.answer not in options:
            raise TunelabError(f"task '{spec.name}': the answer {e.answer!r} of {spec.split} row {i} is not among "
                               f"the options {options}", field=f"eval.tasks.{spec.name}.options")
    if len(options) < 2:
        raise TunelabError(f"task '{spec.name}': choice needs at least two options, got {options}",
                           field=f"eval.tasks.{spec.name}.options")
    return options


def numeric_values(spec: TaskSpec, examples: list[Example]) -> list[float]:
    """Each row's answer as a number ('1,234.5' reads 1234.5); a row whose answer is none stops the task."""
    values = []
    for i, e in enumerate(examples):
        try:
            value = float(e.answer.strip().replace(",", ""))
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise TunelabError(f"task '{spec.name}': the answer {e.answer!r} of {spec.split} row {i} is not a number")
        values.append(value)
    return values
