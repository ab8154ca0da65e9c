"""A wave's built-in generate-and-score tasks, evaluated without inspect-ai's per-sample loop (waves.py).

Why: on a CPU most of an evaluation that was not generation was inspect's machinery around each sample, behind no option
of inspect's (docs/evaluation.md). For a built-in whose plan is one greedy generate() and a scorer of tasks.py (or
choice's option scoring), every prompt is known before the first batch, so tunelab runs the loop: the wave's rows
answered in the batches the pass's queue would cut (mixbatch.MixedBatcher.generate_now), scored by the task's own
inspect scorers, the .eval log written with inspect's records and writer (evallog.py). A sample answers as it does
through inspect's loop (the e2e tests compare every sample); task files, sampling, graders and images keep inspect's
loop."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from inspect_ai.model import ModelName
from inspect_ai.scorer import Target
from inspect_ai.solver import TaskState

from tunelab.errors import TunelabError
from tunelab.evaluate.decoding import sampling_of
from tunelab.evaluate.evallog import (
    SampleResult,
    input_messages,
    now,
    sample_score,
    scorer_names,
    started_logs,
    write_task_log,
)
from tunelab.evaluate.mixbatch import MixedBatcher, RowKey
from tunelab.evaluate.mixgen import Row
from tunelab.evaluate.provider import TunelabModelAPI
from tunelab.evaluate.shared import AdapterView
from tunelab.evaluate.tasks import OPTIONS, option_output
from tunelab.evaluate.work import WorkItem
from tunelab.spec.evaluation import EvalLoop, evaluation_loop


@dataclass
class BatchedTask:
    """One target × task of the wave: its bound inspect Task and Model, its samples and their prompts."""

    item: WorkItem
    task: Any
    model: Any
    samples: list[Any] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)  # the rows to generate (none for choice: its options are scored)

    def options(self) -> list[str] | None:
        """A choice task's options (tasks.py puts them in its metadata); None for a task that generates."""
        return (self.task.metadata or {}).get(OPTIONS) if self.item.spec.builtin == "choice" else None


def batchable(item: WorkItem, task: Any, model: Any, inspect_loop: bool = False) -> bool:
    """Whether tunelab's own loop runs this target × task: the loop the plan priced it by (spec/evaluation.py: a
    built-in, a text model, not `inspect_loop`), and, as built, one greedy generate() on a pass's shared weights."""
    api = model.api
    if not isinstance(api, TunelabModelAPI) or not isinstance(api.lm, AdapterView):
        return False
    chosen = evaluation_loop(item.spec, vision=api.vision is not None, inspect_loop=inspect_loop)
    return chosen.loop == EvalLoop.TUNELAB and sampling_of(task.config) is None and int(task.epochs or 1) == 1


def run_batched(tasks: list[BatchedTask], batcher: MixedBatcher, log_dir: Path, options: dict[str, Any]) -> list[Any]:
    """Each task's EvalLog written into log_dir, or its exception, in order; `options`: as inspect's loop gets them."""
    started = now()
    headers = started_logs([one.task for one in tasks], log_dir, options)
    for one in tasks:
        _prompts(one)
    rows = [row for one in tasks for row in one.rows]
    t0 = time.perf_counter()
    answers = batcher.generate_now(rows)
    share = (time.perf_counter() - t0) / max(1, len(rows))
    out: list[Any] = []
    at = 0
    for one, header in zip(tasks, headers):
        mine, at = answers[at: at + len(one.rows)], at + len(one.rows)
        try:
            out.append(_finish(one, header, mine, share, started))
        except Exception as exc:  # this task's failure (waves.py names it); the others go on
            out.append(exc)
    return out


def _prompts(one: BatchedTask) -> None:
    """The task's samples and a row of the pass's queue for each: its prompt as the provider builds it."""
    api = one.model.api
    one.samples = list(one.task.dataset)
    if one.options() is not None:
        return
    key = RowKey(one.task.config.max_tokens or api.max_tokens(), None, None, (), api.lm.adapter, tuple(api.stop_ids))
    one.rows = [Row(api.prompt_ids(input_messages(s.input)), key.adapter, key) for s in one.samples]


def _finish(one: BatchedTask, header: Any, answers: list[Any], share: float, started: str) -> Any:
    """The task's answers scored and its log written in `header`; a failed batch fails the task with its error."""
    failed = next((a for a in answers if isinstance(a, BaseException)), None)
    if failed is not None:
        raise failed
    api = one.model.api
    options = one.options()
    if options is not None:  # the choice solver's work: each option's continuation scored, on the target's adapter
        t0 = time.perf_counter()
        outputs = [option_output(str(one.model), options, api.score_continuations(input_messages(s.input), options))
                   for s in one.samples]
        share = (time.perf_counter() - t0) / max(1, len(outputs))
    else:
        outputs = [api.output_of(row.prompt_ids, [gen], False, None, []) for row, gen in zip(one.rows, answers)]
        for output in outputs:
            output.time = share  # its share of the batches' time (inspect's loop: its request's time)
    scores = anyio.run(_score, one.task, one.model, one.samples, outputs)
    results = [SampleResult(s, o, sc, share) for s, o, sc in zip(one.samples, outputs, scores)]
    return write_task_log(header, one.task, one.model, results, started)


async def _score(task: Any, model: Any, samples: list[Any], outputs: list[Any]) -> list[dict[str, Any]]:
    """Each sample's scores by the task's own scorers, on the TaskState inspect's loop would hand them."""
    scorers = list(task.scorer or [])
    if not scorers:
        raise TunelabError(f"task '{task.name}' has no scorer")
    names = scorer_names(scorers)
    out = []
    for sample, output in zip(samples, outputs):
        messages = input_messages(sample.input)
        target = Target(sample.target)
        state = TaskState(ModelName(model), sample.id, 1, sample.input, [*messages, output.message], target,
                          choices=sample.choices, output=output, metadata=sample.metadata or {}, completed=True)
        scored = {}
        for name, scorer in zip(names, scorers):
            score = await scorer(state, target)
            scored[name] = sample_score(scorer, score, sample)
        out.append(scored)
    return out
