"""Evaluate several runs as one job: one pass per base model (onepass.py), one target at a time where a pass cannot
serve it, with the reason said. The results are those of evaluate_run: a finished task is skipped unless forced, and a
failing task fails alone: the others' results are written first, then one error names every failure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from tunelab.console import say
from tunelab.errors import NoSpaceError, TunelabError
from tunelab.evaluate import EVALUATION_STACK
from tunelab.evaluate.engine import Engine, resolve_engine
from tunelab.evaluate.grouping import Alone, group_targets, pass_of_one
from tunelab.evaluate.hf import release_weights
from tunelab.evaluate.scores import TaskScores
from tunelab.evaluate.work import ItemKey, Outcome, Report, TargetWork, plan_work, results_by_run
from tunelab.host.device import resolve_device
from tunelab.jobimports import Stack, import_job_stack
from tunelab.models.vlm import is_vision_language
from tunelab.rundir.config import RunConfig
from tunelab.spec import EpochChoice
from tunelab.spec.evaluation import EvalLoop, LoopChoice, evaluation_loop

if TYPE_CHECKING:  # at run time, imported with the evaluation stack (evaluate_runs)
    from tunelab.evaluate.onepass import PassOptions


def evaluate_runs(cfgs: list[RunConfig], epochs: EpochChoice | None = None, force: bool = False, *,
                  tasks: list[str] | None = None, planned: Callable[[int], None] | None = None,
                  report: Report | None = None, console: Console | None = None,
                  batch_size: int | None = None, one_pass: bool = True, adapter_room: int | None = None,
                  fill_batches: bool | None = None, engine: str | None = None,
                  inspect_loop: bool = False) -> dict[str, list[TaskScores]]:
    """Every run's scores, fresh or read back, by target then task. `one_pass=False`: every target one at a time (the
    reference); `adapter_room`: bytes for adapters (None: measured); `fill_batches`: fill short batches with other
    adapters' rows (None: the device's rule); `inspect_loop`: built-ins through inspect-ai's loop too; `engine`: hf |
    vllm (default: the spec's); `planned`/`report`: progress."""
    work = plan_work(cfgs, epochs, force, tasks)
    if planned is not None:
        planned(sum(len(w.items) for w in work.pending))
    if not work.pending:  # every score there: nothing heavy imported
        return results_by_run(work, {})
    # the evaluation stack, imported with the collector paused
    import_job_stack(*EVALUATION_STACK, record_as=Stack.EVALUATION)
    from tunelab.evaluate.onepass import PassOptions, evaluate_group
    from tunelab.evaluate.provider import DEFAULT_BATCH_SIZE

    report = report or (lambda item, outcome: None)
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    outcomes: dict[ItemKey, Outcome] = {}
    pending = _through_vllm(cfgs, work.pending, engine, batch_size, report, console, outcomes)
    device = resolve_device(None)
    if one_pass:
        groups, alone = group_targets(pending, device)
    else:
        groups, alone = [], [Alone(w, "asked for") for w in pending]
    options = PassOptions(batch_size, adapter_room, fill_batches, inspect_loop)
    for group in groups:
        adapters = sum(m.target.adapter_path is not None for m in group.members)
        say("one pass over {} targets of {} ({}): the base model loaded once, {} adapters beside it", len(group.members),
            group.base_path.name, str(group.dtype).removeprefix("torch."), adapters, console=console)
        result = evaluate_group(group, options, report)
        outcomes.update(result.outcomes)
        alone += result.fallback
        say("  {} batches, {} of them mixing adapters; adapters in {} chunks", result.batches, result.mixed,
            result.chunks, console=console)
    for one in alone:
        outcomes.update(_one_at_a_time(one, device, options, one_pass, report, console))
    failures = [o for o in outcomes.values() if isinstance(o, TunelabError)]
    results = results_by_run(work, {k: o for k, o in outcomes.items() if isinstance(o, TaskScores)})
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise TunelabError(f"{len(failures)} evaluations failed (every other one's scores are written):\n"
                           + "\n".join(f"  {f}" for f in failures))
    return results


def _through_vllm(cfgs: list[RunConfig], pending: list[TargetWork], engine: str | None, batch_size: int,
                  report: Report, console: Console | None, outcomes: dict[ItemKey, Outcome]) -> list[TargetWork]:
    """With engine vllm (evaluate/engine.py), what vLLM serves is evaluated there; the targets left for HF."""
    chosen, home = resolve_engine(cfgs, engine)
    if chosen != Engine.VLLM or home is None:
        return pending
    from tunelab.evaluate.vllm_eval import evaluate_vllm

    return evaluate_vllm(pending, home, batch_size, report, console, outcomes)


def _one_at_a_time(one: Alone, device: str, options: PassOptions, one_pass: bool, report: Report,
                   console: Console | None) -> dict[ItemKey, Outcome]:
    """A target alone: a pass of one where a task of it takes tunelab's loop (lone_loop: the loop the plan
    priced), else evaluate_alone (inspect-ai's loop; `one_pass` False asks for it, the reference)."""
    from tunelab.evaluate.onepass import evaluate_group
    from tunelab.evaluate.waves import fail_unended

    chosen = lone_loop(one.work, options.inspect_loop or not one_pass)
    if one_pass:
        way = "a pass of one, " if chosen.loop == EvalLoop.TUNELAB else ""
        say("one at a time: {}: {}; {}{}", one.work.where(), one.reason, way, chosen.why, console=console)
    if chosen.loop == EvalLoop.INSPECT:
        return evaluate_alone(one.work, options.batch_size, report)
    outcomes: dict[ItemKey, Outcome] = {}
    try:
        result = evaluate_group(pass_of_one(one.work, device), options, report)
    except NoSpaceError:
        raise
    except Exception as exc:  # e.g. weights that do not load: this target's failure, named, as evaluate_alone's
        fail_unended(list(one.work.items), outcomes, exc, report)
        return outcomes
    for refused in result.fallback:  # not expected (a pass of one never mixes): inspect-ai's loop then
        result.outcomes.update(evaluate_alone(refused.work, options.batch_size, report))
    return result.outcomes


def lone_loop(work: TargetWork, inspect_loop: bool) -> LoopChoice:
    """The loop a target alone takes (spec/evaluation.py): tunelab's where any of its tasks takes it, else inspect-ai's
    with the first task's reason (a directory that is no model too: inspect names what is missing)."""
    base = work.target.base_path
    if not (base / "config.json").is_file():
        return LoopChoice(EvalLoop.INSPECT, "its base model directory has no config.json")
    vision = is_vision_language(base)
    choices = [evaluation_loop(item.spec, vision=vision, inspect_loop=inspect_loop) for item in work.items]
    return next((c for c in choices if c.loop == EvalLoop.TUNELAB), choices[0])


def evaluate_alone(work: TargetWork, batch_size: int, report: Report) -> dict[ItemKey, Outcome]:
    """One target, every pending task, as evaluate_run evaluates it; a failing task is recorded, the next runs."""
    from tunelab.evaluate.runner import evaluate_task

    out: dict[ItemKey, Outcome] = {}
    try:
        for item in work.items:
            outcome: Outcome
            try:
                outcome = evaluate_task(item.cfg, item.target, item.spec, item.out_dir, batch_size)
            except NoSpaceError:  # the next task's results could not be written either: stop, one line
                raise
            except TunelabError as exc:
                outcome = exc
            except Exception as exc:  # e.g. a checkpoint that does not load: this target's failure, named
                outcome = TunelabError(f"task '{item.spec.name}' failed on {work.where()}: {type(exc).__name__}: "
                                       f"{exc}", file=work.target.adapter_path or Path(item.cfg.model.path))
            out[item.key] = outcome
            report(item, outcome)
    finally:
        release_weights()
    return out
