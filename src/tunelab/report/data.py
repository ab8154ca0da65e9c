"""Everything a report says, gathered once from the ledger and the run directories' own files; each field comes from one
named file or table, so any cell traces back to a run and a file."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunelab.execute.attempts import AttemptRow, all_attempts
from tunelab.ledger.results import EvalRecord, RunRecord, collect_results
from tunelab.report.checkpoints import EpochCheck, verify_checkpoints
from tunelab.report.coverage import (
    AbsentRun,
    EvalGap,
    PlannedEval,
    absent_runs,
    planned_epochs_evaluated,
    planned_evals,
    split_counts,
)
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import SPEC_FILE, load_runs
from tunelab.rundir.layout import COMPLETED, RUNNING, RunState
from tunelab.rundir.metrics import read_metrics
from tunelab.rundir.scores import read_scores
from tunelab.rundir.stages import StageRecord, checkpoint_stages, read_stage_records
from tunelab.rundir.status import Status, read_status
from tunelab.rundir.summary import Summary, read_summary
from tunelab.spec import ExperimentSpec, load_spec
from tunelab.stats.records import SampleValue

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class Point:
    step: int
    epoch: float | None
    value: float


@dataclass
class TaskInfo:
    """One evaluation task as the report shows it: what it is and the metrics its scores carry."""

    name: str
    source: str  # built-in name, or the task file (and @task)
    dataset: str | None
    split: str | None
    primary_metric: str | None = None
    greater_is_better: bool = True
    metrics: list[str] = field(default_factory=list)  # in the order the scores list them

    def shown_metrics(self) -> list[str]:
        """The primary metric first, then the others; standard errors are uncertainty, not scores."""
        rest = [m for m in self.metrics if m != self.primary_metric and m.split("/")[-1] not in ("stderr", "std")]
        return ([self.primary_metric] if self.primary_metric else []) + rest


@dataclass
class RunData:
    """One fine-tuned run or control: its config, files and ledger record."""

    name: str
    kind: str  # "fine-tuned" | "control" | "eval-only"
    model: str
    dataset: str
    factors: dict[str, Any]  # swept values, model and dataset excluded
    state: RunState
    run_dir: Path
    rel_dir: str  # runs/<name> or controls/<name>
    config: RunConfig
    status: Status = field(default_factory=Status)
    summary: Summary = field(default_factory=Summary)  # all None until the run completed; NaN read as None
    train_loss: list[Point] = field(default_factory=list)
    val_loss: list[Point] = field(default_factory=list)
    nan_rows: list[int] = field(default_factory=list)  # steps whose loss or val_loss is not finite
    metrics_rows: int = 0
    evals: list[EvalRecord] = field(default_factory=list)  # checkpoint x task, base first then by epoch
    checkpoints: list[EpochCheck] = field(default_factory=list)
    attempts: list[AttemptRow] = field(default_factory=list)  # oldest first
    error: str | None = None
    dir_bytes: int = 0
    record: RunRecord | None = None  # what `tunelab results` shows of the run
    samples: dict[tuple[str, str], list[SampleValue]] = field(default_factory=dict)  # (label, task) -> per sample
    stages: list[StageRecord] = field(default_factory=list)  # a staged run's completed stages (stages.json)
    epoch_stage: dict[int, str] = field(default_factory=dict)  # a staged run's global epoch -> 'STAGE/epoch_K'
    planned: list[PlannedEval] = field(default_factory=list)  # every target × task it should be evaluated on

    @property
    def is_control(self) -> bool:
        return self.kind == "control"

    @property
    def score(self) -> float | None:
        """Headline score: the first task's primary metric on the last evaluated checkpoint."""
        return self.record.score if self.record else None

    @property
    def last_label(self) -> str | None:
        return self.evals[-1].label if self.evals else None

    def task_evals(self, task: str) -> list[EvalRecord]:
        """This task's records, one per evaluated checkpoint (base first, then by epoch)."""
        return [e for e in self.evals if e.task == task]

    def task_eval(self, task: str, label: str | None = None) -> EvalRecord | None:
        """A task's record on a checkpoint (default: the last evaluated); None where it was not evaluated."""
        label = label or self.last_label
        return next((e for e in self.evals if e.task == task and e.label == label), None)

    @property
    def eval_gaps(self) -> list[EvalGap]:
        """Planned evaluations with no scores.json, or with fewer samples than the task's split holds."""
        gaps = []
        for p in self.planned:
            e = self.task_eval(p.task, p.label)
            if e is None:
                gaps.append(EvalGap(p.label, p.task, None, p.samples))
            elif p.samples is not None and e.samples is not None and e.samples < p.samples:
                gaps.append(EvalGap(p.label, p.task, e.samples, p.samples))
        return gaps

    @property
    def fully_evaluated(self) -> bool:
        return bool(self.evals) and not self.eval_gaps

    @property
    def partly_evaluated(self) -> bool:
        return bool(self.evals) and bool(self.eval_gaps)

    def planned_samples(self, task: str, label: str) -> int | None:
        return next((p.samples for p in self.planned if p.task == task and p.label == label), None)

    def value(self, task: str, metric: str | None = None) -> float | None:
        """A task's metric (default: its primary) on the last evaluated checkpoint."""
        e = self.task_eval(task)
        if e is None:
            return None
        return e.score if metric is None else e.metrics.get(metric)

    def interval(self, task: str, metric: str | None = None, label: str | None = None) -> tuple[float, float] | None:
        """The 95 % interval of a task's metric (default: primary) on a checkpoint (default: the last)."""
        e = self.task_eval(task, label)
        return e.bounds(metric or e.primary_metric) if e else None

    def sample_scores(self, task: str, label: str | None = None) -> list[SampleValue]:
        """Per-sample records of a task on a checkpoint (default: the last evaluated); [] when not kept."""
        return self.samples.get((label or self.last_label or "", task), [])

    @property
    def planned_epochs(self) -> int | None:
        """Epochs the run should save: its own, or its stages' together (None when any stops at max_steps)."""
        ts = self.config.trainings()
        return sum(t.epochs for t in ts) if ts and all(t.max_steps is None for t in ts) else None

    def checkpoint_name(self, epoch: int | None, label: str) -> str:
        """A checkpoint as the report names it, with a staged run's stage beside it ('epoch_2 (hard/epoch_1)')."""
        stage = self.epoch_stage.get(epoch) if epoch is not None else None
        return f"{label} ({stage})" if stage else label

    def stage_starts(self) -> list[tuple[int, str]]:
        """(step before its first, name) of each stage begun: the completed ones, and the next once it logged a step."""
        starts = [(r.first_step, r.name) for r in self.stages]
        done, after = len(self.stages), self.stages[-1].last_step if self.stages else 0
        if done < len(self.config.stages) and any(p.step > after for p in self.train_loss + self.val_loss):
            starts.append((after, self.config.stages[done].name))
        return starts

    def level(self, factor: str) -> Any:
        if factor == "model":
            return self.model
        return self.dataset if factor == "dataset" else self.factors.get(factor)


@dataclass
class ReportData:
    name: str
    experiment_dir: Path
    description: str
    models: list[str]
    datasets: list[str]
    factors: dict[str, list[Any]]  # swept factors with their levels (model/dataset when several)
    runs: list[RunData]
    controls: list[RunData]
    attempts: list[AttemptRow]
    model_paths: dict[str, Path]
    tasks: list[TaskInfo]  # spec order; the first is the headline task
    generated_at: str
    spec: ExperimentSpec | None = None
    eval_only: list[RunData] = field(default_factory=list)
    prompts: dict[str, str | None] = field(default_factory=dict)  # p1 -> template, when prompts are swept
    twins: list[RunData] = field(default_factory=list)  # tuned runs' default-lr twins (tune.compare_default)
    absent: list[AbsentRun] = field(default_factory=list)  # runs the spec designs with no directory here
    design_error: str | None = None  # why the spec's design could not be checked against the directories

    @property
    def all(self) -> list[RunData]:
        return self.runs + self.controls + self.eval_only

    @property
    def references(self) -> list[RunData]:
        """What fine-tuned runs are compared with: controls and eval-only checkpoints."""
        return self.controls + self.eval_only

    @property
    def eval_task(self) -> str | None:
        """The headline task's name."""
        return self.tasks[0].name if self.tasks else None

    @property
    def headline(self) -> TaskInfo | None:
        return self.tasks[0] if self.tasks else None

    @property
    def completed(self) -> list[RunData]:
        return [r for r in self.runs if r.state == COMPLETED]

    @property
    def first_start(self) -> str | None:
        starts = [r.status.first_started_at or r.status.started_at for r in self.runs]
        return min((s for s in starts if s), default=None)

    @property
    def last_finish(self) -> str | None:
        ends = [r.status.finished_at for r in self.runs if r.state != RUNNING]
        return max((s for s in ends if s), default=None)

    @property
    def partial(self) -> bool:
        """True while something is to come: runs not completed, designed runs missing, evaluations not all there."""
        return any(r.state != COMPLETED for r in self.runs) or bool(self.absent) or any(
            not r.fully_evaluated for r in self.completed + self.references)

    def shared_stage(self, epoch: int) -> str | None:
        """The stage label every fine-tuned run gives a global epoch, for a table's header or a figure's tick;
        None for unstaged runs, or where the runs' stages differ (a swept STAGE.epochs): each run's own then."""
        labels = {r.epoch_stage.get(epoch) for r in self.runs}
        return labels.pop() if len(labels) == 1 else None

    def control_for(self, run: RunData) -> RunData | None:
        """The base-model control of a run's model and dataset (and prompt, when prompts are swept)."""
        return next((c for c in self.controls if c.model == run.model and c.dataset == run.dataset
                     and c.factors.get("prompt") == run.factors.get("prompt")), None)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def finite_summary(summary: Summary) -> Summary:
    """summary.json with its non-finite numbers (a NaN loss) read as missing: the report shows '—'."""
    nan: dict[str, Any] = {f.name: None for f in dataclasses.fields(summary)
           if isinstance(v := getattr(summary, f.name), float) and not math.isfinite(v)}
    return dataclasses.replace(summary, **nan) if nan else summary


def dir_size(path: Path) -> int:
    total = 0
    if path.is_dir():
        for p in path.rglob("*"):
            try:
                if p.is_file() and not p.is_symlink():
                    total += p.stat().st_size
            except OSError:
                continue
    return total


def weights_size(model_dir: Path) -> int:
    """Bytes of the weight files of a Hugging Face model directory."""
    if not model_dir.is_dir():
        return 0
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def _read_metrics(run: RunData) -> None:
    rows = read_metrics(run.run_dir)
    run.metrics_rows = len(rows)
    for r in rows:
        if r.step is None:
            continue
        for v, target in ((r.loss, run.train_loss), (r.val_loss, run.val_loss)):
            if v is None:
                continue
            if not _finite(v):
                run.nan_rows.append(int(r.step))
                continue
            target.append(Point(int(r.step), r.epoch, float(v)))


def _task_infos(cfgs: list[RunConfig], everything: list[RunData]) -> list[TaskInfo]:
    """The tasks of the experiment (spec order), with the metrics their scores carry."""
    infos: dict[str, TaskInfo] = {}
    for cfg in cfgs:
        for t in cfg.eval.resolved_tasks():
            if t.name not in infos:
                source = t.builtin or (f"{Path(t.file).name}" + (f" ({t.task})" if t.task else "") if t.file else "?")
                infos[t.name] = TaskInfo(t.name, source, (t.dataset or cfg.dataset.name) if t.builtin else None,
                                         t.split if t.builtin else None)
    for r in everything:
        for e in r.evals:
            info = infos.setdefault(e.task, TaskInfo(e.task, e.builtin or "file", e.dataset, e.split))
            info.primary_metric = info.primary_metric or e.primary_metric
            info.greater_is_better = e.greater_is_better
            info.metrics += [m for m in e.metrics if m not in info.metrics]
    return list(infos.values())


def _run_data(cfg: RunConfig, rec: RunRecord, exp: Path, attempts: list[AttemptRow],
              counts: dict[tuple[str, str], int]) -> RunData:
    run = RunData(
        name=cfg.name, kind=rec.kind, model=rec.model, dataset=rec.dataset, factors=rec.factors,
        state=rec.state, run_dir=cfg.run_dir, rel_dir=str(cfg.run_dir.relative_to(exp)), config=cfg,
        status=read_status(cfg.run_dir), evals=list(rec.evals), error=rec.error, record=rec,
    )
    run.summary = finite_summary(read_summary(cfg.run_dir) or Summary())
    run.attempts = [a for a in attempts if a.run == cfg.name]
    run.dir_bytes = dir_size(cfg.run_dir)
    run.samples = {(s.label, s.task): s.per_sample for s in read_scores(cfg.run_dir) if s.per_sample}
    if cfg.kind == "finetune":
        _read_metrics(run)
        run.checkpoints = verify_checkpoints(cfg.run_dir)
        run.stages = read_stage_records(cfg.run_dir) if cfg.stages else []
        run.epoch_stage = {e: at.label for e, at in checkpoint_stages(cfg, run.stages).items()}
    epochs = planned_epochs_evaluated(cfg, run.planned_epochs, [c.epoch for c in run.checkpoints], run.stages)
    run.planned = planned_evals(cfg, epochs, counts)
    return run


def _factors(spec: ExperimentSpec | None, models: list[str], datasets: list[str], runs: list[RunData],
             prompts: dict[str, str | None]) -> dict[str, list[Any]]:
    factors: dict[str, list[Any]] = {}
    if len(models) > 1:
        factors["model"] = models
    if len(datasets) > 1:
        factors["dataset"] = datasets
    if spec:
        factors.update({k: list(prompts) if k == "prompt" else list(v) for k, v in spec.factors.items()
                        if k not in ("model", "dataset")})
    else:
        for r in runs:
            for k, v in r.factors.items():
                if v not in factors.setdefault(k, []):
                    factors[k].append(v)
    return factors


def gather(experiment_dir: str | Path) -> ReportData:
    """Ingest the run directories into the ledger, then read everything a report needs."""
    exp = Path(experiment_dir).resolve()
    results = {r.name: r for r in collect_results(exp)}  # ingests every run dir first
    cfgs = load_runs(exp)
    spec = load_spec(exp / SPEC_FILE) if (exp / SPEC_FILE).is_file() else None
    attempts = all_attempts(exp)
    by_kind: dict[str, list[RunData]] = {"finetune": [], "control": [], "eval_only": [], "twin": []}
    counts = split_counts(exp)
    for cfg in cfgs:  # a default-lr twin is kept apart: the findings are the tuned runs'; the Tuning section compares
        kind = "twin" if cfg.default_lr_of is not None else cfg.kind
        by_kind[kind].append(_run_data(cfg, results[cfg.name], exp, attempts, counts))
    runs, controls, eval_only = by_kind["finetune"], by_kind["control"], by_kind["eval_only"]
    everything = runs + controls + eval_only
    models = spec.model_levels() if spec else sorted({r.model for r in runs + controls})
    datasets = spec.dataset_levels() if spec else sorted({r.dataset for r in runs + controls})
    prompts = spec.prompt_names() if spec and "prompt" in spec.factors else {}
    adopted = any(r.status.adopted_from for r in everything)
    absent, design_error = absent_runs(spec, exp, {c.name for c in cfgs}, adopted) if spec else ([], None)
    return ReportData(
        name=spec.name if spec else exp.name,
        experiment_dir=exp,
        description=(spec.description or "").strip() if spec else "",
        models=models,
        datasets=datasets,
        factors=_factors(spec, models, datasets, runs, prompts),
        runs=runs,
        controls=controls,
        attempts=attempts,
        model_paths={c.model.name: Path(c.model.path) for c in cfgs},
        tasks=_task_infos(cfgs, everything),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        spec=spec,
        eval_only=eval_only,
        prompts=prompts,
        twins=by_kind["twin"],
        absent=absent,
        design_error=design_error,
    )
