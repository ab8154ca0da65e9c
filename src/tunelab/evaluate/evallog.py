"""The .eval log of a task that tunelab ran itself (batched.py): inspect-ai's own records (EvalSpec, EvalSample,
EvalResults), its metrics computed by inspect's own results code, written by inspect's own writer, so that
scores.json, the ledger, the report and `inspect view` read it as they read a log of inspect's loop.

What differs from a log of inspect's loop is said here once: no per-sample event transcript (spans, the model
event, state changes; the sample's messages, its output with the exact prompt and the scores are all kept), no
git revision, and each sample's times are its batch's share.

Three names come from inspect-ai's internals (`eval_results`, `unique_scorer_name`, `registry_unqualified_name`,
through inspect_internals.py): the very functions its loop calls, so the metrics and score names cannot drift from
it; tests/e2e/test_eval_batched.py compares every sample, metric, reduction and header field with inspect's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SampleResult:
    """One sample as the batched path ends it: its output (the provider's ModelOutput) and each scorer's score."""

    sample: Any  # inspect Sample
    output: Any  # inspect ModelOutput
    scores: dict[str, Any]  # scorer name → inspect SampleScore
    seconds: float  # its share of its batch's time


def now() -> str:
    """A time as inspect's stats record it (to the microsecond: a task's duration is read from two of them)."""
    return datetime.now(timezone.utc).isoformat()


def scorer_names(scorers: list[Any]) -> list[str]:
    """The names the task's scores go under in the log (inspect's rule: the scorer's name, numbered when repeated)."""
    from tunelab.evaluate.inspect_internals import unique_scorer_name

    names: list[str] = []
    for scorer in scorers:
        names.append(unique_scorer_name(scorer, names))
    return names


def sample_score(scorer: Any, score: Any, sample: Any) -> Any:
    from inspect_ai.scorer import SampleScore

    from tunelab.evaluate.inspect_internals import registry_unqualified_name

    return SampleScore(score=score, sample_id=sample.id, sample_metadata=sample.metadata,
                       scorer=registry_unqualified_name(scorer))


def write_task_log(task: Any, model: Any, results: list[SampleResult], started: str, log_dir: Path,
                   max_tasks: int, max_samples: int) -> Any:
    """The task's EvalLog, written into log_dir under inspect's file-name pattern; returned with its location."""
    from inspect_ai.log import write_eval_log

    from tunelab.evaluate.logcompression import compress_logs_in_one_thread

    log = _eval_log(task, model, results, started, max_tasks, max_samples)
    stamp = log.eval.created.replace(":", "-").replace("+", "-")
    location = log_dir / f"{stamp}_{log.eval.task.replace('_', '-')}_{log.eval.task_id}.eval"
    compress_logs_in_one_thread()
    write_eval_log(log, str(location))
    log.location = str(location)
    return log


def _eval_log(task: Any, model: Any, results: list[SampleResult], started: str, max_tasks: int,
              max_samples: int) -> Any:
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalPlan, EvalPlanStep, EvalSpec, EvalStats
    from shortuuid import uuid

    from tunelab.evaluate.inspect_internals import eval_results

    name = str(model)
    evaluated, reductions = eval_results(len(results), [r.scores for r in results], task.epochs_reducer,
                                         task.scorer, task.metrics, completed_samples=len(results))
    dataset = task.dataset
    spec = EvalSpec(
        eval_id=uuid(), run_id=uuid(), created=started[:19] + started[-6:], task=task.name, task_id=uuid(),
        task_version=task.version, task_display_name=task.display_name, task_attribs=task.attribs,
        dataset=EvalDataset(name=dataset.name, location=dataset.location, samples=len(results),
                            sample_ids=[r.sample.id for r in results], shuffled=dataset.shuffled),
        model=name, model_generate_config=model.config, model_args=model.model_args,
        config=EvalConfig(epochs=1, fail_on_error=True, max_tasks=max_tasks, max_samples=max_samples,
                          log_samples=True, log_realtime=False, score_display=False),
        packages={"inspect_ai": version("inspect_ai"), "tunelab": version("tunelab")}, metadata=task.metadata)
    log = EvalLog(eval=spec, status="success",
                  plan=EvalPlan(steps=[EvalPlanStep(solver="generate", params={"tool_calls": "loop"})],
                                config=task.config),
                  results=evaluated,
                  stats=EvalStats(started_at=started, completed_at=now(), model_usage=_usage(results, name)),
                  samples=[_sample(r, name) for r in results])
    log.reductions = reductions  # set after: EvalLog's validator reads a `reductions` argument as an old log's dict
    return log


def _usage(results: list[SampleResult], model: str) -> dict[str, Any]:
    """The evaluated model's tokens over the task (none recorded for outputs without usage: choice's)."""
    from inspect_ai.model import ModelUsage

    used = [r.output.usage for r in results if r.output.usage is not None]
    total = ModelUsage()
    for usage in used:
        total = total + usage
    return {model: total} if used else {}


def _sample(result: SampleResult, model: str) -> Any:
    """A sample as inspect's loop logs it: the input messages marked as input, then the answer."""
    from inspect_ai.log import EvalSample
    from shortuuid import uuid

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
