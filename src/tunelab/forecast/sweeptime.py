"""A plan's time, predicted in one pass (`predict_sweep`, the one call plan makes): the levers, the runs' estimates,
each run's evaluation, the deadline verdict, the search's price and the makespan, on the devices the sweep may use."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tunelab.catalog import GPU
from tunelab.errors import TunelabError
from tunelab.execute import (
    executors,  # executors.cluster_facts, looked up when called (tests inject a cluster)
    schedule,  # schedule.visible_gpus, looked up when called (tests inject GPUs)
)
from tunelab.execute.executor import NodeAsk
from tunelab.execute.executors import executor_class
from tunelab.execute.schedule import Device, cpu_devices
from tunelab.forecast.combine import summed
from tunelab.forecast.deadline import DeadlinePlan, RunTimeline, judge
from tunelab.forecast.evalrun import RunEvalPrediction, SplitRows, model_estimate, predict_run_eval
from tunelab.forecast.gpus import NodeSize
from tunelab.forecast.interval import time_range
from tunelab.forecast.jobstart import JobDispatch, job_dispatch, job_start, warm_start_s, with_dispatch
from tunelab.forecast.levers import choose_levers, mid_epoch_saves
from tunelab.forecast.savecost import save_cost
from tunelab.forecast.searchline import pending_search, search_gives, search_line
from tunelab.forecast.speedhistory import device_key
from tunelab.forecast.split import Lengths
from tunelab.forecast.tunecost import SearchCost, search_costs, trial_evaluations
from tunelab.ledger import generation, history, predictions
from tunelab.ledger.generation import GenerationRow
from tunelab.ledger.history import HistoryRun
from tunelab.ledger.predictions import PredictedPart, PredictionRecord
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import LeverChoice, RunEstimate, SourceKind, TimeRange
from tunelab.spec import ExperimentSpec
from tunelab.spec.resources import ResourcesSpec, parse_duration
from tunelab.spec.tune import objective_task


def devices_held(est: RunEstimate | None, gpu: GPU | None) -> int:
    """The devices one run holds in the forecast: its processes on GPUs, else one (forecast/sweeptime.timeline)."""
    return est.processes if est is not None and gpu is not None else 1


def cluster_devices(resources: ResourcesSpec, runs: list[RunConfig], estimates: dict[str, RunEstimate],
                    gpu: GPU | None) -> tuple[list[Device], str] | None:
    """The nodes' room for these runs as forecast devices, and where it came from; None where the executor reads no
    cluster. Every node offers room for the largest ask among the runs (what its fine-tuned runs ask: controls ask
    less), `devices_held` devices a run, node after node (ClusterFacts.slots): a run never spans two nodes."""
    read = executors.cluster_facts(resources)
    if read is None:
        return None
    if read.facts is None:
        n = max(1, len(runs))
        return ([Device(f"job{i}") for i in range(n)],
                f"every run at once: the cluster {read.address or '(no address)'} could not be read ({read.problem}), "
                "so the plan goes by the spec alone")
    asks = [a for c in runs if (a := executors.node_ask(c)) is not None]
    ask = max(asks, key=lambda a: (a.gpus, a.cpus), default=NodeAsk(1, 0))
    each = max((devices_held(estimates.get(c.name), gpu) for c in runs), default=1)
    facts = read.facts
    slots = facts.slots(ask, each)
    at_once = len(slots) // each
    nodes = ", ".join(n.words() for n in facts.nodes) or "none alive"
    return ([Device(s) for s in slots],
            f"the nodes of {facts.source} — {nodes} — {at_once} run(s) at once, each asking one node for "
            f"{ask.words()}; queue wait not predicted")


NODE_JOB_GPUS = 4  # a node job's GPUs when slurm.pack_gpus is unset (execute/slurm_pack.py DEFAULT_PACK_GPUS)
NOTES = ["evaluation follows each run's training on the same devices", "a scheduler's queue wait is not predicted"]


@dataclass(frozen=True)
class Sweep:
    """What the verdict reads of a plan (plan/planner.py's Plan, without importing it: it imports this)."""

    spec: ExperimentSpec
    runs: list[RunConfig]
    estimates: dict[str, RunEstimate]
    gpu: GPU | None
    node: NodeSize
    levered: bool = False  # some run's levers chose its settings
    history: list[HistoryRun] | None = None  # None: the user's history, loaded here
    generation: list[GenerationRow] | None = None  # the history's generation speeds; None: loaded here
    errors: list[PredictionRecord] | None = None  # the history's recorded prediction errors; None: loaded here
    evaluations: dict[str, RunEvalPrediction] | None = None  # each run's, predicted once (with_evaluations)
    dispatch: JobDispatch | None = None  # each job's dispatch on the sweep's executor, read once (with_history)
    spec_path: Path = Path("experiment.yaml")  # what errors name


def timeline(cfg: RunConfig, est: RunEstimate | None, plan: Sweep, split_rows: SplitRows) -> RunTimeline:
    """One run's parts, each with its interval: training and saves (fine-tuned runs), evaluation start and evaluation; a
    control generates at the speed its model trains at. Each job the executor starts after its dispatch: the training
    job, and the evaluation job where it is one of its own (a detached executor). P10/P90 as forecast/combine.py
    combines them."""
    history = plan.history or []
    ev = (plan.evaluations or {}).get(cfg.name) or predict_run_eval(
        cfg, plan.gpu, split_rows, history, plan.generation, errors=plan.errors,
        estimate=est or model_estimate(cfg, plan.runs, plan.estimates))
    dispatch = plan.dispatch or sweep_dispatch(plan.spec.resources, history)
    eval_dispatch = evaluation_dispatch(cfg, dispatch)
    evaluation = with_dispatch(ev.start, eval_dispatch) if eval_dispatch is not None else ev.start
    line = RunTimeline(run=cfg.name, kind=cfg.kind, gpus=est.processes if est and plan.gpu is not None else 1,
                       eval_start_s=evaluation.seconds, eval_start_source=evaluation.source, eval_s=ev.seconds,
                       eval_source=ev.detail, eval_targets=ev.targets, eval_samples=ev.samples,
                       train_s=0.0, train_source="no training",
                       peak_memory_gib=est.peak_memory_gib if est is not None else None)
    ranges: list[TimeRange | None] = [evaluation.range()]  # parts no record holds: independent of the rest
    recorded: list[TimeRange | None] = [ev.range]  # parts a run's records hold (ledger/predictions.py)
    parts = {PredictedPart.EVAL}
    if cfg.training is not None:
        line.train_s = est.seconds if est is not None else None
        line.train_source = est.time_source if est is not None else "not estimated"
        if est is not None:
            recorded.append(est.time_range or (time_range(est.seconds, SourceKind.ASSUMED) if est.seconds else None))
            parts |= {PredictedPart.TRAIN}
            if est.startup_kind and est.startup_raw_s:  # its start-up recorded apart (forecast/ranged.py)
                parts.add(PredictedPart.TRAIN_START)
        if est is not None and est.seconds is not None and est.startup_s is not None:  # its start-up apart
            line.train_start_s = round(est.startup_s + dispatch.seconds, 3)
            line.train_start_source = f"the estimate's start-up ({est.startup_kind or 'its source'}){dispatch.words}"
            line.train_s = round(est.seconds - est.startup_s, 1)
            ranges.append(dispatch.range())
        elif est is not None and est.startup_s is None:  # the estimate's speed came without a measured start-up
            start = with_dispatch(job_start(cfg.model.path, plan.gpu, history), dispatch)
            line.train_start_s, line.train_start_source = start.seconds, start.source
            ranges.append(start.range())
        if line.train_start_s:  # a lane's later jobs start warm: the stack's import skipped, where it is timed
            line.warm_s = round(min(warm_start_s(plan.spec.resources.executor, plan.gpu), line.train_start_s), 3)
        if est is not None and not cfg.stages:
            line.saves_s, line.saves_source, kind = _saves(cfg, est, plan.gpu, history)
            ranges.append(time_range(line.saves_s, kind) if line.saves_s else None)
    if line.train_s is not None and line.eval_s is not None:  # what the records hold as one, the rest apart
        line.add_total([summed(recorded, plan.errors or [], device_key(plan.gpu), frozenset(parts), "the run"),
                        *ranges])
    return line


def sweep_dispatch(resources: ResourcesSpec, past: list[HistoryRun]) -> JobDispatch:
    """Each job's dispatch on the sweep's executor (forecast/jobstart.py); none per run where runs start inside a
    node job (slurm.pack: node), whose one dispatch is not priced."""
    if resources.slurm is not None and resources.slurm.pack == "node":
        return JobDispatch(str(resources.executor), 0.0, "runs start inside a node job", SourceKind.ASSUMED)
    return job_dispatch(str(resources.executor), past)


def evaluation_dispatch(cfg: RunConfig, dispatch: JobDispatch) -> JobDispatch | None:
    """The dispatch a run's evaluation pays: its job's own on a detached executor (Slurm, Ray: a job after the
    training's, a control's job); none where the sweep's own process starts it (local) or where a fine-tuned run's
    training job runs it (a Ray run on one node and at most one GPU, a Slurm node job)."""
    executor = executor_class(cfg.resources.executor)
    in_training = cfg.training is not None and executor.evaluates_in_training_job(cfg.resources)
    return dispatch if executor.detached and not in_training else None


def _saves(cfg: RunConfig, est: RunEstimate, gpu: GPU | None, history: list[HistoryRun]
           ) -> tuple[float, str, SourceKind]:
    """The run's mid-epoch saves: seconds, source, kind. Where its time holds them already (first contact prices
    them, reference runs' overhead carries theirs: `RunEstimate.saves_in_time`), they are not added twice."""
    assert cfg.training is not None
    saves = mid_epoch_saves(cfg.training, est.seconds, est.steps)
    if not saves:
        return 0.0, "epoch ends only", SourceKind.ASSUMED
    if est.saves_in_time:
        return 0.0, f"{saves} mid-epoch saves: in the training time (priced with it)", SourceKind.MEASURED
    save = save_cost(cfg, gpu, history)
    return (round(saves * save.seconds, 1), f"{saves} mid-epoch saves, {save.source}",
            SourceKind.MEASURED if save.measured else SourceKind.ASSUMED)


def sweep_devices(plan: Sweep) -> tuple[list[Device], str]:
    """The devices the sweep's runs are placed on, and where that came from."""
    res = plan.spec.resources
    if (on_nodes := cluster_devices(res, plan.runs, plan.estimates, plan.gpu)) is not None:
        return on_nodes  # an executor that reads its cluster (Ray): its nodes now
    if executor_class(res.executor).detached:
        s = res.slurm
        if s is not None and s.pack == "node":
            n = s.pack_gpus if s.pack_gpus is not None else (NODE_JOB_GPUS if plan.gpu is not None else 0)
            said = "slurm.pack_gpus" if s.pack_gpus is not None else f"assumed: slurm.pack_gpus unset, {NODE_JOB_GPUS}"
            return ([Device(str(i)) for i in range(n)] or [Device("cpu")],
                    f"a node job's {n} GPUs ({said})" if n else "a node job on CPU: one run at a time")
        cap = (s.array_max_running if s is not None and s.array_max_running else None)
        slots = cap or (s.max_queued if s is not None else 50) // 2
        return ([Device(f"job{i}") for i in range(max(1, slots))],
                f"{slots} runs at once (" + ("slurm.array_max_running" if cap else "slurm.max_queued / 2: a "
                                             "training and an evaluation job each") + "), queue wait not predicted")
    if plan.gpu is None:
        k = res.cpu_runs()
        return cpu_devices(k), ("this machine's CPU: one run at a time" if k == 1 else
                                f"this machine's CPU: {k} runs side by side, each on its share of the cores")

    gpus = schedule.visible_gpus()
    if gpus:
        return gpus, f"{len(gpus)} GPU(s) visible here"
    n = plan.node.gpus
    return ([Device(str(i), plan.gpu.memory_gib) for i in range(n)],
            f"{n} GPUs assumed (none visible here; {plan.node.source})")


def sweep_deadline(spec: ExperimentSpec, given: str | None) -> tuple[str | None, float | None]:
    """(text, seconds) of the sweep's deadline: `--deadline` over resources.deadline; a bad one names --deadline."""
    if given is None:
        return spec.resources.deadline, spec.resources.deadline_s
    try:
        return given.strip(), parse_duration(given)
    except ValueError as exc:
        raise TunelabError(str(exc), field="--deadline") from None


def deadline_plan(plan: Sweep, deadline: str, deadline_s: float, split_rows: SplitRows,
                  with_search: bool = True) -> DeadlinePlan:
    """The verdict on the runs against `deadline`, after the search still to run (unless `with_search` is off)."""
    plan = with_evaluations(plan, split_rows)  # the history read and each run's evaluation predicted, once
    lines = [timeline(cfg, plan.estimates.get(cfg.name), plan, split_rows) for cfg in plan.runs]
    devices, source = sweep_devices(plan)
    per_device = plan.spec.resources.runs_per_gpu if plan.gpu is not None else 1
    notes = list(NOTES)
    if not plan.levered:
        notes.append("levers off: training.levers: auto may shorten the training")
    lanes = 1 if executor_class(plan.spec.resources.executor).detached else len(devices)  # tune/search.py
    pending = (pending_search(plan.spec, plan.runs, plan.estimates, search_evaluations(plan, split_rows), lanes)
               if with_search else None)
    if pending is not None and pending.combos:
        return judge(deadline, deadline_s, lines, devices, source, per_device, notes, search_line(pending),
                     search_gives(pending))
    return judge(deadline, deadline_s, lines, devices, source, per_device, notes)


def with_history(plan: Sweep) -> Sweep:
    """The sweep with the history's runs, generation speeds, recorded errors and its executor's job dispatch read
    (where not read yet)."""
    past = history.load() if plan.history is None else plan.history
    return replace(plan, history=past, generation=generation.load() if plan.generation is None else plan.generation,
                   errors=predictions.load() if plan.errors is None else plan.errors,
                   dispatch=plan.dispatch or sweep_dispatch(plan.spec.resources, past))


def with_evaluations(plan: Sweep, split_rows: SplitRows) -> Sweep:
    """The sweep with the history read and every run's evaluation predicted (where not yet): the timelines, the
    verdict, the makespan and run.yaml's eval_* all read these, so each is predicted once per plan."""
    plan = with_history(plan)
    if plan.evaluations is not None:
        return plan
    return replace(plan, evaluations={cfg.name: predict_run_eval(
        cfg, plan.gpu, split_rows, plan.history or [], plan.generation, errors=plan.errors,
        estimate=model_estimate(cfg, plan.runs, plan.estimates)) for cfg in plan.runs})


def search_evaluations(plan: Sweep, split_rows: SplitRows) -> dict[str, RunEvalPrediction]:
    """One trial's evaluation job by combination, priced like the runs' evaluations (an eval-metric objective;
    {} otherwise): the plan's search costs and the deadline's search line price it alike."""
    tune = plan.spec.tune
    if tune is None or objective_task(tune.objective, plan.spec.eval) is None:
        return {}
    plan = with_history(plan)
    return trial_evaluations(plan.spec, plan.runs, lambda cfg: predict_run_eval(
        cfg, plan.gpu, split_rows, plan.history or [], plan.generation, errors=plan.errors,
        estimate=plan.estimates.get(cfg.name)))


def sweep_forecast(plan: Sweep, split_rows: SplitRows) -> DeadlinePlan:
    """The runs' makespan and interval judged against no deadline: the runs alone, as the report measures the sweep."""
    return deadline_plan(plan, "none", math.inf, split_rows, with_search=False)


def plan_forecast(plan: Sweep, verdict: DeadlinePlan | None, split_rows: SplitRows) -> DeadlinePlan:
    """The sweep's makespan every place shows: the verdict's own where it judged the runs alone, else sweep_forecast."""
    if verdict is not None and verdict.search is None:
        return verdict
    return sweep_forecast(plan, split_rows)


@dataclass(frozen=True)
class SweepPrediction:
    """What a plan predicts of time, each computed once (verdict None without a deadline)."""

    levers: dict[str, list[LeverChoice]]
    estimates: dict[str, RunEstimate]
    evaluations: dict[str, RunEvalPrediction]
    deadline: DeadlinePlan | None
    search: list[SearchCost]
    forecast: DeadlinePlan


def predict_sweep(sweep: Sweep, deadline: tuple[str | None, float | None],
                  estimate: Callable[[], dict[str, RunEstimate]], lengths: Lengths, split_rows: SplitRows,
                  cpu_threads: int | None = None) -> SweepPrediction:
    """The plan's time in order: levers, estimates, evaluations, the deadline's verdict, the search, the makespan."""
    text, seconds = deadline
    levers = choose_levers(sweep.runs, sweep.spec, sweep.spec_path, sweep.gpu, seconds, lengths, cpu_threads)
    estimates = estimate()
    for name, choices in levers.items():
        estimates[name].levers = choices
    done = with_evaluations(replace(sweep, estimates=estimates, levered=bool(levers)), split_rows)
    verdict = deadline_plan(done, text, seconds, split_rows) if text is not None and seconds is not None else None
    search = search_costs(done.spec, done.runs, estimates, search_evaluations(done, split_rows))
    return SweepPrediction(levers, estimates, done.evaluations or {}, verdict, search,
                           plan_forecast(done, verdict, split_rows))
