"""Evaluate one run: every task of its eval spec on every chosen target, with inspect-ai, one target at a time.

Each task writes <run_dir>/eval/<label>/<task>/{*.eval, scores.json}; one whose scores.json exists is skipped unless
forced, and a failure leaves none, so it is redone next time. One-pass evaluation (passes.py) builds, checks and
finishes each task with the same functions."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluate import EVALUATION_STACK
from tunelab.evaluate.decoding import check_generate_config, describe, sampling_of
from tunelab.evaluate.hf import release_weights
from tunelab.evaluate.inspect_internals import compress_logs_in_one_thread
from tunelab.evaluate.scores import (
    SCORES_FILE,
    TaskScores,
    finite_or_none,
    read_task_scores,
    scored_samples,
    task_dir,
    write_scores,
)
from tunelab.evaluate.targets import Target, select_targets
from tunelab.evaluate.usertasks import check_grader_dir, resolve_user_task
from tunelab.fsutil import is_disk_full, no_space_error, space_guard
from tunelab.host.cpuload import LoadMeter, LoadWindow
from tunelab.host.machine import cpu_model
from tunelab.jobimports import Stack, import_job_stack
from tunelab.rundir.config import RunConfig
from tunelab.spec import EpochChoice, TaskSpec
from tunelab.stats.intervals import task_intervals
from tunelab.stats.records import SampleValue

# What every inspect eval of tunelab's is run with. log_realtime=False: inspect's realtime sample buffer (a SQLite
# database written at every event of every sample) goes, a measurable share of an evaluation (docs/evaluation.md);
# the .eval log is written as before.
INSPECT_OPTIONS: dict[str, Any] = dict(log_format="eval", display="none", score_display=False, log_realtime=False)


def inspect_eval(tasks: Any, **options: Any) -> list[Any]:
    """inspect_ai.eval as every tunelab evaluation runs it: INSPECT_OPTIONS, log members compressed in one thread."""
    import inspect_ai

    compress_logs_in_one_thread()
    return list(inspect_ai.eval(tasks, **INSPECT_OPTIONS, **options))


def evaluate_run(cfg: RunConfig, epochs: EpochChoice | None = None, force: bool = False, *,
                 batch_size: int | None = None, tasks: list[str] | None = None) -> list[TaskScores]:
    """Every target × task of a run (finished ones skipped unless force); batch_size 1: the unbatched reference."""
    base = Path(cfg.model.path)
    if not (base / "config.json").is_file():
        raise TunelabError("base model directory not found (no config.json)", file=base)
    specs = chosen_tasks(cfg, tasks)
    for spec in specs:  # a broken task file fails here, before any model loads or file is written
        if spec.file:
            resolve_user_task(spec)
    results: list[TaskScores] = []
    try:
        for target in select_targets(cfg, epochs):
            for spec in specs:
                out = task_dir(cfg.run_dir, target.label, spec.name)
                existing = None if force else read_task_scores(out / SCORES_FILE)
                results.append(existing or evaluate_task(cfg, target, spec, out, batch_size))
            release_weights()
    finally:
        release_weights()
    return results


def chosen_tasks(cfg: RunConfig, names: list[str] | None) -> list[TaskSpec]:
    specs = cfg.eval.resolved_tasks()
    if not names:
        return specs
    unknown = sorted(set(names) - {s.name for s in specs})
    if unknown:
        raise TunelabError(f"unknown task(s) {unknown}; this run's tasks: {[s.name for s in specs]}", field="--task")
    return [s for s in specs if s.name in names]


def build_task(cfg: RunConfig, spec: TaskSpec) -> tuple[Any, str | None, str | None]:
    """(inspect Task, the provider's prompt_template, the @task function name) of one task spec."""
    if spec.file:
        ut = resolve_user_task(spec)
        return ut.build(), spec.prompt if spec.prompt is not None else cfg.prompt, ut.function
    from tunelab.evaluate.tasks import build_builtin_task

    return build_builtin_task(cfg, spec), None, None


@dataclass(frozen=True)
class PreparedTask:
    """A task built for one target, its settings checked, before any weights load."""

    task: Any  # inspect Task
    template: str | None  # the provider's prompt_template
    function: str | None  # the task file's @task function
    decoding: str  # how its tokens are chosen ('greedy' or 'sampling, …')


def prepare_task(cfg: RunConfig, spec: TaskSpec) -> PreparedTask:
    """Build and check one task (a task that cannot be built leaves old results alone)."""
    task, template, function = build_task(cfg, spec)
    _check_task_config(spec, function, task)
    return PreparedTask(task, template, function, describe(sampling_of(task.config)))


def clear_outputs(out_dir: Path) -> None:
    """Old results of a task are void from here: scores first, so a crash can't pair stale scores with a new log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SCORES_FILE).unlink(missing_ok=True)
    for old in out_dir.glob("*.eval"):
        old.unlink()


def eval_metadata(cfg: RunConfig, target: Target, spec: TaskSpec, prepared: PreparedTask, grader: Any) -> dict[str, Any]:
    """The .eval log's metadata: the task's own, and what was evaluated (run, label, task: a one-pass
    evaluation finds each log's target × task by them, so they win over a task file's keys of those names)."""
    return {**(prepared.task.metadata or {}),
            "run": cfg.name, "kind": cfg.kind, "label": target.label, "epoch": target.epoch, "task": spec.name,
            "decoding": prepared.decoding, "grader": str(grader) if grader else None}


def evaluate_task(cfg: RunConfig, target: Target, spec: TaskSpec, out_dir: Path, batch_size: int | None) -> TaskScores:
    """One task on one target: the .eval log, then scores.json (last, atomically)."""
    # a process's first evaluation: its stack imported with the collector paused
    import_job_stack(*EVALUATION_STACK, record_as=Stack.EVALUATION)
    from inspect_ai import task_with
    from inspect_ai.model import get_model

    from tunelab.evaluate.provider import DEFAULT_BATCH_SIZE, PROVIDER, model_args_of

    started, meter = time.monotonic(), LoadMeter.start()  # the load over the task, as its time is measured
    prepared = prepare_task(cfg, spec)
    clear_outputs(out_dir)
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    grader = grader_model(spec, batch_size)
    # memoize=False: a re-evaluation after retraining must not reuse a cached Model.
    model = get_model(f"{PROVIDER}/{cfg.name}/{target.label}", memoize=False,
                      **model_args_of(cfg, target, prepared.template, batch_size))
    task = task_with(prepared.task, metadata=eval_metadata(cfg, target, spec, prepared, grader))
    try:
        with space_guard(out_dir):  # a full disk under the .eval log: one NoSpaceError naming the directory
            [log] = inspect_eval(
                task, model=model, model_roles={"grader": grader} if grader else None, log_dir=str(out_dir),
                max_connections=2 * batch_size, max_samples=2 * batch_size, fail_on_error=True)
    finally:
        model.api.close()
        if grader is not None:
            grader.api.close()
    return finish_task(cfg, target, spec, out_dir, prepared, log, grader, round(time.monotonic() - started, 3),
                       meter.window() if meter is not None else None)


def finish_task(cfg: RunConfig, target: Target, spec: TaskSpec, out_dir: Path, prepared: PreparedTask, log: Any,
                grader: Any, duration_s: float, load: LoadWindow | None) -> TaskScores:
    """scores.json from a task's finished log (written last, atomically), with the load over its time."""
    if log.status != "success":
        if log.error is not None and is_disk_full(RuntimeError(log.error.message), out_dir):
            raise no_space_error(out_dir, None)  # inspect caught the write's ENOSPC into its log: one line
        raise _failure(cfg, target, spec, prepared.function, log)
    scores = _scores_record(cfg, target, spec, prepared.function, log)
    # the window as scores.json keeps it (rounded): the scores returned equal the scores read back
    scores.duration_s, scores.load = duration_s, LoadWindow.from_json(load.to_json()) if load is not None else None
    scores.decoding, scores.grader = prepared.decoding, str(grader) if grader else None
    write_scores(out_dir, scores)
    return scores


def _check_task_config(spec: TaskSpec, function: str | None, task: Any) -> None:
    """The task's own GenerateConfig, before any weights load: what the provider cannot honour is named."""
    where = f"task '{spec.name}'" + (f" (@task {function})" if function else "")
    try:
        check_generate_config(task.config, where)
    except TunelabError as exc:
        raise TunelabError(exc.message, file=spec.file) from None


def grader_model(spec: TaskSpec, batch_size: int) -> Any:
    """The model bound to inspect's `grader` role (None: the evaluated one): a local directory, or any inspect model."""
    from inspect_ai.model import get_model

    from tunelab.evaluate.provider import PROVIDER

    if spec.grader is None:
        return None
    field = f"eval.tasks.{spec.name}.grader"
    if isinstance(spec.grader, str):
        try:
            return get_model(spec.grader, memoize=False)
        except Exception as exc:  # an unknown provider, a missing API key or package: inspect's own message
            raise TunelabError(f"task '{spec.name}': grader {spec.grader!r} cannot be loaded: {exc}",
                               field=field) from None
    path = Path(spec.grader.path)
    check_grader_dir(path, spec.name)
    return get_model(f"{PROVIDER}/{path}", memoize=False, base_path=str(path), batch_size=batch_size,
                     max_tokens=spec.grader.max_tokens, cache_weights=False)


def _failure(cfg: RunConfig, target: Target, spec: TaskSpec, function: str | None, log: Any) -> TunelabError:
    """One error naming the task (its file, and the line in it), the checkpoint, the cause and the log."""
    detail = log.error.message if log.error else f"the evaluation ended with status '{log.status}'"
    if not spec.file:
        return TunelabError(f"task '{spec.name}' failed on {cfg.name} {target.label}: {detail}", file=log.location)
    frames = re.findall(r'File "([^"]+)", line (\d+)', log.error.traceback if log.error else "")
    mine = [n for f, n in frames if Path(f).resolve() == Path(spec.file).resolve()]
    at = f" (line {mine[-1]})" if mine else ""
    return TunelabError(f"task '{spec.name}' (@task {function}) failed on {cfg.name} {target.label}: {detail}{at}; "
                        f"log: {log.location}", file=spec.file)


def metrics_of(log: Any) -> dict[str, float | None]:
    """Every metric of the log: `metric` with one scorer, `scorer/metric` with several."""
    evals = log.results.scores if log.results else []
    several = len(evals) > 1
    return {(f"{s.name}/{k}" if several else k): finite_or_none(v.value)
            for s in evals for k, v in s.metrics.items()}


def _scores_record(cfg: RunConfig, target: Target, spec: TaskSpec, function: str | None, log: Any) -> TaskScores:
    from tunelab.evaluate.metrics import LOWER_IS_BETTER
    from tunelab.evaluate.tasks import PRIMARY

    metrics = metrics_of(log)
    if not metrics:
        raise TunelabError(f"task '{spec.name}' produced no metrics (does its scorer declare any?)", file=log.location)
    primary = PRIMARY[spec.builtin] if spec.builtin else next(iter(metrics))
    samples = sample_values(log)
    inspect_s = inspect_seconds(log)
    return TaskScores(
        run=cfg.name, kind=cfg.kind, label=target.label, epoch=target.epoch, task=spec.name, builtin=spec.builtin,
        file=spec.file, task_function=function,
        dataset=cfg.dataset_named(spec.dataset).name if spec.builtin else None,
        split=spec.split if spec.builtin else None,
        metrics=metrics, primary_metric=primary, score=metrics.get(primary),
        greater_is_better=primary.split("/")[-1] not in LOWER_IS_BETTER,
        samples=log.results.completed_samples if log.results else 0, log=Path(log.location).name,
        model_path=str(target.base_path), adapter_path=str(target.adapter_path) if target.adapter_path else None,
        max_tokens=spec.max_tokens or cfg.eval.max_tokens, duration_s=0.0, inspect_duration_s=inspect_s,
        evaluated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        per_sample=samples, intervals=task_intervals(samples, metrics), **throughput(log))


def throughput(log: Any) -> dict[str, Any]:
    """What the evaluation's time depends on, for predicting the next one: the evaluated model's tokens (a grader's
    apart), the batch, the device, and how many target × tasks shared the wall time."""
    import torch

    usage = (log.stats.model_usage if log.stats else {}).get(str(log.eval.model))
    cuda = torch.cuda.is_available()
    return dict(prompt_tokens=usage.input_tokens if usage else None,
                generated_tokens=usage.output_tokens if usage else None,
                batch_size=(log.eval.model_args or {}).get("batch_size"), concurrent=log.eval.config.max_tasks or 1,
                device=torch.cuda.get_device_name(0) if cuda else "cpu", cpu_model=None if cuda else cpu_model())


def inspect_seconds(log: Any) -> float | None:
    """inspect's own start-to-end time of the eval (None when the log does not say)."""
    stats = log.stats
    if not (stats and stats.started_at and stats.completed_at):
        return None
    return round((datetime.fromisoformat(stats.completed_at) - datetime.fromisoformat(stats.started_at))
                 .total_seconds(), 3)


def sample_values(log: Any) -> list[SampleValue]:
    """Each sample's score (by inspect's value_to_float) and what the choice and numeric metrics need."""
    from inspect_ai.scorer import value_to_float

    to_float = value_to_float()
    out = []
    for s in scored_samples(log.location):
        first = next(iter(s.scores.values())) if s.scores else None
        meta = dict(first.metadata or {}) if first else {}
        value = None
        if first is not None and not isinstance(first.value, (dict, list)):
            value = finite_or_none(to_float(first.value))
        images = (s.metadata or {}).get("images")  # image samples: the answer and the files, for the report
        out.append(SampleValue(id=s.id, value=value, target=meta.get("target"), prediction=meta.get("prediction"),
                               probs=meta.get("probs"), images=images or None,
                               expected=str(s.target) if images else None,
                               answer=first.answer if images and first else None))
    return out
