"""The .eval log of a task tunelab ran itself (batched.py), made of inspect-ai's own records, results code and writer,
so scores.json, the ledger, the report and `inspect view` read it as a log of inspect's loop. The header and plan are
inspect's own: its eval starts each task's log without running a sample (`run_samples=False`).

What differs from inspect's loop: no per-sample event transcript (messages, output and scores kept), and each sample's
times are its batch's share. The names from inspect's internals are the very functions its loop calls, so metrics and
score names cannot drift (the e2e tests compare every field)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shortuuid import uuid

from tunelab.evaluate.inspect_internals import (
    compress_logs_in_one_thread,
    eval_results,
    registry_unqualified_name,
    unique_scorer_name,
)


@dataclass(frozen=True)
class SampleResult:
    """One sample as the batched path ends it: its output (the provider's ModelOutput) and each scorer's score."""

    sample: Any  # inspect Sample
    output: Any  # inspect ModelOutput
    scores: dict[str, Any]  # scorer name → inspect SampleScore
    seconds: float  # its share of its batch's time


def now() -> str:
    """A time as inspect's stats record it (to the microsecond: a task's duration is read from two of them)."""
    return datetime.now(UTC).isoformat()


def scorer_names(scorers: list[Any]) -> list[str]:
    """The names the task's scores go under in the log (inspect's rule: the scorer's name, numbered when repeated)."""
    names: list[str] = []
    for scorer in scorers:
        names.append(unique_scorer_name(scorer, names))
    return names


def sample_score(scorer: Any, score: Any, sample: Any) -> Any:
    from inspect_ai.scorer import SampleScore

    return SampleScore(score=score, sample_id=sample.id, sample_metadata=sample.metadata,
                       scorer=registry_unqualified_name(scorer))


def started_logs(tasks: list[Any], log_dir: Path, options: dict[str, Any]) -> list[Any]:
    """Each task's log as inspect's own eval starts it, in the tasks' order: its header, its plan and the file in
    log_dir it goes to, from an eval that runs no sample (`options`: those inspect's loop would be given)."""
    from tunelab.evaluate.runner import inspect_eval

    logs = inspect_eval(tasks, model=None, log_dir=str(log_dir), run_samples=False, **options)
    if [log.eval.task for log in logs] != [task.name for task in tasks]:
        raise RuntimeError(f"inspect started the logs of {[log.eval.task for log in logs]}, "
                           f"not of {[task.name for task in tasks]}")
    return logs


def write_task_log(header: Any, task: Any, model: Any, results: list[SampleResult], started: str) -> Any:
    """The task's EvalLog, written where inspect started it; `started`: when tunelab's loop started it."""
    from inspect_ai.log import EvalStats, write_eval_log

    name = str(model)
    evaluated, reductions = eval_results(len(results), [r.scores for r in results], task.epochs_reducer,
                                         task.scorer, task.metrics, completed_samples=len(results))
    stats = EvalStats(started_at=started, completed_at=now(), model_usage=_usage(results, name))
    log = header.model_copy(update={"status": "success", "results": evaluated, "stats": stats,
                                    "samples": [_sample(r, name) for r in results]})
    log.reductions = reductions  # set after: EvalLog's validator reads a `reductions` argument as an old log's dict
    compress_logs_in_one_thread()
    write_eval_log(log, header.location)
    return log


def _usage(results: list[SampleResult], model: str) -> dict[str, Any]:
    """The evaluated model's tokens over the task (none recorded for outputs without usage: choice's)."""
    from inspect_ai.model import ModelUsage

    used = [r.output.usage for r in results if r.output.usage is not None]
    return {model: sum(used, ModelUsage())} if used else {}


def _sample(result: SampleResult, model: str) -> Any:
    """A sample as inspect's loop logs it: the input messages marked as input, then the answer."""
    from inspect_ai.log import EvalSample

    sample, output = result.sample, result.output
    messages = [m.model_copy(update={"source": "input"}) for m in input_messages(sample.input)]
    return EvalSample(id=sample.id, epoch=1, input=sample.input, choices=sample.choices, target=sample.target,
                      messages=[*messages, output.message], output=output,
                      scores={name: s.score for name, s in result.scores.items()}, metadata=sample.metadata or {},
                      model_usage={model: output.usage} if output.usage else {}, total_time=round(result.seconds, 6),
                      working_time=round(result.seconds, 6), uuid=uuid())


def input_messages(input: Any) -> list[Any]:
    """A sample's input as messages (a bare string is one user message, as inspect reads it)."""
    from inspect_ai.model import ChatMessageUser

    return [ChatMessageUser(content=input)] if isinstance(input, str) else list(input)
