"""A wave of a one-pass evaluation (onepass.py): whole targets' tasks run at once on the pass's shared weights —
built-ins in tunelab's loop (batched.py) first, the rest by one `inspect_ai.eval` — then each log moved from a staging
directory beside its scores.json, matched by its metadata (run, label, task). inspect's task-end hook would write each
as it ends, but a registered hook prints a banner on stdout, the MCP server's channel."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from inspect_ai import task_with
from inspect_ai.model import get_model

from tunelab.errors import NoSpaceError, TunelabError
from tunelab.evaluate.batched import BatchedTask, batchable, run_batched
from tunelab.evaluate.provider import PROVIDER, model_args_of
from tunelab.evaluate.runner import (
    PreparedTask,
    clear_outputs,
    eval_metadata,
    finish_task,
    grader_model,
    inspect_eval,
    inspect_seconds,
)
from tunelab.evaluate.shared import SharedWeights, serving
from tunelab.evaluate.work import ItemKey, Outcome, Report, WorkItem
from tunelab.fsutil import is_disk_full, space_guard
from tunelab.host.cpuload import LoadMeter
from tunelab.spec import TaskSpec


def wave_items(items: list[WorkItem], prepared: dict[ItemKey, PreparedTask], samples: int) -> list[list[WorkItem]]:
    """Whole targets' items, waves filled up to `samples` samples; a pass killed half way keeps finished waves."""
    waves: list[list[WorkItem]] = []
    count = samples
    for item in items:
        new_target = not waves or waves[-1][-1].target != item.target or waves[-1][-1].cfg.name != item.cfg.name
        if new_target and count >= samples:
            waves.append([])
            count = 0
        waves[-1].append(item)
        count += _samples_of(prepared[item.key].task, samples)
    return waves


def _samples_of(task: Any, unknown: int) -> int:
    """The samples a task generates for (its dataset × epochs); `unknown` for a dataset of no known length."""
    try:
        return len(task.dataset) * int(getattr(task, "epochs", None) or 1)
    except TypeError:
        return unknown


def run_wave(items: list[WorkItem], shared: SharedWeights, prepared: dict[ItemKey, PreparedTask],
             batch_size: int, report: Report, outcomes: dict[ItemKey, Outcome], inspect_loop: bool = False) -> None:
    """The wave's items at once: tunelab's loop, then one inspect-ai eval; each log moved, each outcome recorded."""
    state = _PassState({item.key: item for item in items}, prepared, report, outcomes)
    staging = Path(tempfile.mkdtemp(prefix=".tunelab-eval-pass-", dir=items[0].cfg.experiment_dir))
    crash: Exception | None = None
    try:
        with serving(shared):
            tasks = {item.key: state.bind(item, batch_size) for item in items}
            for item in items:
                clear_outputs(item.out_dir)
            ours = [BatchedTask(item, tasks[item.key], state.model_of[item.key]) for item in items
                    if batchable(item, tasks[item.key], state.model_of[item.key], inspect_loop)]
            rest = [tasks[item.key] for item in items if not any(one.item is item for one in ours)]
            try:
                with space_guard(items[0].cfg.experiment_dir):  # a full disk under the logs: one line, stop
                    if ours:  # their logs say what inspect's loop would run the wave's tasks with
                        _run_ours(ours, shared, staging, state, eval_options(len(items), batch_size))
                    logs = inspect_eval(rest, model=None, log_dir=str(staging),
                                        **eval_options(len(rest), batch_size)) if rest else []
            except NoSpaceError:
                raise
            except Exception as exc:  # the wave's tasks fail with this; the pass goes on
                logs, crash = [], exc
        for log in logs:
            state.ended(log)
    finally:
        state.close()
        shutil.rmtree(staging, ignore_errors=True)
    fail_unended(items, outcomes, crash, report)


def eval_options(tasks: int, batch_size: int) -> dict[str, Any]:
    """The options of an inspect eval of `tasks` tasks of a wave: all at once, two batches of samples in flight."""
    return dict(max_tasks=tasks, max_samples=2 * batch_size, max_connections=2 * batch_size * tasks,
                fail_on_error=True)


def _run_ours(ours: list[BatchedTask], shared: SharedWeights, staging: Path, state: _PassState,
              options: dict[str, Any]) -> None:
    """The batched items: each log ended (moved, scored) as soon as all are written; a task that failed, named."""
    assert shared.batcher is not None
    for one, log in zip(ours, run_batched(ours, shared.batcher, staging, options)):
        if not isinstance(log, Exception):
            state.ended(log)
            continue
        if is_disk_full(log, staging):
            raise log
        item = one.item
        state.settle(item, TunelabError(f"task '{item.spec.name}' failed on {item.cfg.name} {item.target.label}: "
                                        f"{type(log).__name__}: {log}"))


def fail_unended(items: list[WorkItem], outcomes: dict[ItemKey, Outcome], crash: Exception | None,
                 report: Report) -> None:
    """Every item of an eval that left no outcome fails, named, with the eval's crash (or the missing log)."""
    for item in items:
        if item.key not in outcomes:
            why = f"{type(crash).__name__}: {crash}" if crash else "the evaluation ended without its log"
            outcome = TunelabError(f"task '{item.spec.name}' failed on {item.cfg.name} {item.target.label}: {why}")
            outcomes[item.key] = outcome
            report(item, outcome)


class _PassState:
    """The items of one inspect eval: their models and graders, and what happened to each."""

    def __init__(self, items: dict[ItemKey, WorkItem], prepared: dict[ItemKey, PreparedTask], report: Report,
                 outcomes: dict[ItemKey, Outcome]):
        self.items, self.prepared, self.report, self.outcomes = items, prepared, report, outcomes
        self.models: list[Any] = []
        self.graders: dict[str, Any] = {}  # one grader model per distinct grader of the pass's tasks
        self.grader_of: dict[ItemKey, Any] = {}
        self.model_of: dict[ItemKey, Any] = {}
        self.meter = LoadMeter.start()  # the wave's load: from its start to each task's end (its tasks run at once)

    def bind(self, item: WorkItem, batch_size: int) -> Any:
        """The item's inspect Task with its own model (the provider finds the shared weights) and grader."""
        p = self.prepared[item.key]
        grader = self.grader_of[item.key] = self._grader(item.spec, batch_size)
        # memoize=False: a re-evaluation after retraining must not reuse a cached Model.
        model = get_model(f"{PROVIDER}/{item.cfg.name}/{item.target.label}", memoize=False,
                          **model_args_of(item.cfg, item.target, p.template, batch_size))
        self.models.append(model)
        self.model_of[item.key] = model
        task = task_with(p.task, model=model, metadata=eval_metadata(item.cfg, item.target, item.spec, p, grader))
        return task if grader is None else task_with(task, model_roles={"grader": grader})

    def _grader(self, spec: TaskSpec, batch_size: int) -> Any:
        if spec.grader is None:
            return None
        key = spec.grader if isinstance(spec.grader, str) else spec.grader.model_dump_json()
        if key not in self.graders:
            self.graders[key] = grader_model(spec, batch_size)
        return self.graders[key]

    def ended(self, log: Any) -> None:
        """A task's log is complete: move it beside its scores.json and write that (or record its failure)."""
        meta = log.eval.metadata or {}
        key = (meta.get("run"), meta.get("label"), meta.get("task"))
        item = self.items.get(key)  # type: ignore[arg-type]
        if item is None or item.key in self.outcomes:
            return
        outcome: Outcome
        try:
            moved = item.out_dir / Path(log.location).name
            shutil.move(log.location, moved)
            log.location = str(moved)
            outcome = finish_task(item.cfg, item.target, item.spec, item.out_dir, self.prepared[item.key], log,
                                  self.grader_of.get(item.key), inspect_seconds(log) or 0.0,
                                  self.meter.window() if self.meter is not None else None)
        except NoSpaceError:  # no other task's results could be written either: stop here, with one line
            raise
        except TunelabError as exc:
            outcome = exc
        except Exception as exc:  # this task's failure, named; the others go on
            outcome = TunelabError(f"task '{item.spec.name}' on {item.cfg.name} {item.target.label}: "
                                   f"{type(exc).__name__}: {exc}")
        self.settle(item, outcome)

    def settle(self, item: WorkItem, outcome: Outcome) -> None:
        """What became of an item (its scores, or its failure), recorded and reported."""
        self.outcomes[item.key] = outcome
        self.report(item, outcome)

    def close(self) -> None:
        for model in [*self.models, *self.graders.values()]:
            model.api.close()
