"""The pipeline's tools: each calls the module function its CLI command calls and returns a typed model.
Every path argument goes through Workspace.inside; a TunelabError becomes a tool error with the CLI's line."""

from __future__ import annotations

import functools
import io
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio.from_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from rich.console import Console

from tunelab.errors import TunelabError
from tunelab.mcp.models import (
    CancelOut,
    EvalOut,
    PlanOut,
    ProbeOut,
    ReportOut,
    ResultsOut,
    RunOut,
    ScaffoldOut,
    SpecDraft,
    StatusOut,
    TuneOut,
    ValidateOut,
)
from tunelab.mcp.paths import Workspace
from tunelab.mcp.sweeps import Sweeps

F = TypeVar("F", bound=Callable[..., Any])
Exp = Annotated[str, Field(description="Experiment directory (relative to the workspace root).")]
Spec = Annotated[str, Field(description="experiment.yaml (relative to the workspace root).")]
Gpu = Annotated[str | None, Field(description="Target GPU for estimates, e.g. H100-80GB (default: the spec's, "
                                              "else detected, else this machine's CPU).")]
RunNames = Annotated[list[str] | None, Field(description="Only these runs or controls (default: all).")]


def one_line(fn: F) -> F:
    """User errors and failures of the environment as tool errors carrying the CLI's one line, no traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TunelabError as exc:
            raise ToolError(str(exc)) from None
        except OSError as exc:  # what the machine did (permission, disk full): named, not a traceback
            where = " → ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
            raise ToolError(f"{where}: {exc.strerror or exc}" if where else str(exc.strerror or exc)) from None
        except (sqlite3.OperationalError, subprocess.TimeoutExpired) as exc:
            raise ToolError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def report_progress(ctx: Context | None, done: float, total: float, message: str) -> None:
    """An MCP progress notification from a tool's worker thread (nothing when the client asked for none)."""
    if ctx is not None:
        anyio.from_thread.run(ctx.report_progress, done, total, message)


def quiet() -> Console:
    """Where the library's progress lines go: not stdout (the stdio transport's), and not kept."""
    return Console(file=io.StringIO(), width=120)


def with_overrides(draft_path: Path, overrides: dict[str, Any], gpu: Any) -> Any:
    """Merge the overrides into the drafted spec (a dict section into the draft's section) and plan it again:
    the spec written is still one `tunelab plan` accepts."""
    import yaml

    from tunelab.fsutil import atomic_write_text, dump_yaml
    from tunelab.plan.planner import make_plan

    spec = yaml.safe_load(draft_path.read_text())
    for key, value in overrides.items():
        merged = isinstance(value, dict) and isinstance(spec.get(key), dict)
        spec[key] = {**spec[key], **value} if merged else value
    atomic_write_text(draft_path, dump_yaml(spec))
    return make_plan(draft_path, draft_path.parent, gpu=gpu)


class PipelineTools:
    """init_spec → validate → plan/estimate/probe → scaffold → run → status/cancel → eval → results → report."""

    def __init__(self, ws: Workspace, sweeps: Sweeps):
        self.ws = ws
        self.sweeps = sweeps

    def _spec(self, given: str, field: str = "spec") -> Path:
        """A spec (or run.yaml) argument inside the root, and every path it names inside it too."""
        from tunelab.mcp.confine import confine_spec

        path = self.ws.inside(given, field)
        confine_spec(self.ws, path)
        return path

    def _experiment(self, given: str) -> Path:
        """An experiment directory inside the root whose run.yaml files name paths inside it only."""
        from tunelab.mcp.confine import confine_experiment

        exp = self.ws.inside(given, "experiment_dir")
        confine_experiment(self.ws, exp)
        return exp

    def _gpu(self, name: str | None, path: Path) -> Any:
        """The named GPU, else resources.gpu of the run.yaml or spec (merged with the user config), else the
        detected one, else None (this machine's CPU)."""
        from tunelab.catalog import planning_gpu
        from tunelab.rundir.config import RUN_FILE, load_run_config
        from tunelab.spec import load_spec
        from tunelab.userconfig import merge_resources

        if name:
            return planning_gpu(name, None)
        if path.name == RUN_FILE or (path / RUN_FILE).is_file():
            return planning_gpu(None, load_run_config(path).resources.gpu)
        return planning_gpu(None, merge_resources(load_spec(path).resources).gpu)

    @one_line
    def init_spec(
        self,
        models: Annotated[list[str], Field(description="Base model directories (several: compared).")],
        datasets: Annotated[list[str], Field(description="Dataset files (jsonl, csv, ...).")],
        out: Annotated[str, Field(description="Experiment directory (gets experiment.yaml) or a *.yaml path.")],
        vary: Annotated[dict[str, list[Any]] | None, Field(description="Factor → levels, e.g. "
                                                           "{\"lora_rank\": [4, 64]}; runs are every combination.")] = None,
        name: str | None = None,
        epochs: int = 1,
        controls: Annotated[bool, Field(description="Evaluate each base model untuned.")] = True,
        validation: bool = True,
        gpus_per_run: Annotated[int, Field(description="0: CPU; 1: one device; more: distributed.")] = 1,
        prompt: Annotated[str | None, Field(description="Prompt template with {input}.")] = "{input}",
        gpu: Gpu = None,
        force: Annotated[bool, Field(description="Replace an existing experiment.yaml.")] = False,
        overrides: Annotated[dict[str, Any] | None, Field(description="Spec fields set over the draft, merged "
                                                          "section by section, e.g. {\"training\": {\"batch_size\": "
                                                          "16}, \"eval\": {\"max_tokens\": 8}}.")] = None,
    ) -> SpecDraft:
        """Draft experiment.yaml from answers (models and data verified, the runs planned) and write it."""
        from tunelab.catalog import detect_gpu, resolve_gpu
        from tunelab.init.answers import InitAnswers, commit, default_name, draft
        from tunelab.mcp.confine import confine_spec

        target = self.ws.inside(out, "out")
        answers = InitAnswers(
            name=name or default_name(target), vary=dict(vary or {}), gpus_per_run=gpus_per_run,
            models=[self.ws.existing_model(m, f"models[{i}]") for i, m in enumerate(models)],
            datasets=[self.ws.existing_dataset(d, f"datasets[{i}]") for i, d in enumerate(datasets)],
            validation=validation, controls=controls, epochs=epochs, prompt=prompt or None,
            gpu=resolve_gpu(gpu).name if gpu else None)
        target_gpu = resolve_gpu(gpu) if gpu else detect_gpu()
        tmp, plan = draft(answers, target, gpu=target_gpu, force=force)
        try:
            plan = with_overrides(tmp, overrides, target_gpu) if overrides else plan
            confine_spec(self.ws, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        path = commit(tmp, target)
        return SpecDraft.of(self.ws.shown(path), plan)

    @one_line
    def validate(self, path: Annotated[str, Field(description="experiment.yaml or a run's run.yaml.")],
                 gpu: Gpu = None) -> ValidateOut:
        """Check every run: predicted OOM, missing splits or fields, prompt without {input}, warm-up."""
        from tunelab.plan.validate import validate_path

        target = self._spec(path, "path")
        checks = validate_path(target, self._gpu(gpu, target))  # None: no GPU named or here, this machine's CPU
        return ValidateOut.of(checks)

    @one_line
    def plan(self, spec: Spec, gpu: Gpu = None,
             write_md: Annotated[bool, Field(description="Write plan.md beside the spec.")] = True,
             deadline: Annotated[str | None, Field(description="Wall-clock budget of the whole sweep ('6h', '90m', "
                                                   "'1d'); overrides resources.deadline.")] = None) -> PlanOut:
        """Verify models, data and eval task; every run with its estimates and their sources; writes plan.md.
        With a deadline: the sweep's verdict against it, its makespan and the levers chosen per run."""
        from tunelab.fsutil import atomic_write_text
        from tunelab.plan.markdown import render_plan_md
        from tunelab.plan.planner import make_plan

        path = self._spec(spec)
        self.ws.spec_models(path)
        plan = make_plan(path, gpu=self._gpu(gpu, path), deadline=deadline)
        md = atomic_write_text(path.parent / "plan.md", render_plan_md(plan)) if write_md else None
        return PlanOut.of(plan, self.ws.shown(md) if md else None)

    @one_line
    def estimate(self, spec: Spec, gpu: Gpu = None, ctx: Context | None = None) -> PlanOut:
        """The plan's estimates for another GPU (or this one), writing nothing (a first estimate simulates each
        run shape's step: progress reported at the start and the end)."""
        from tunelab.plan.planner import make_plan

        path = self._spec(spec)
        self.ws.spec_models(path)
        report_progress(ctx, 0, 1, "planning: simulating each run shape's training step")
        plan = make_plan(path, gpu=self._gpu(gpu, path))
        report_progress(ctx, 1, 1, f"estimated {len(plan.finetune_runs)} run(s)")
        return PlanOut.of(plan)

    @one_line
    def probe(self, spec: Spec, ctx: Context | None = None) -> ProbeOut:
        """A few real optimizer steps of each run shape here; records speed and memory in the history (reports
        progress shape by shape)."""
        from tunelab.estimate.probe import probe_runs
        from tunelab.plan.planner import make_plan

        plan = make_plan(self._spec(spec), estimates=False)

        def progress(i: int, n: int, shape: Any, result: Any) -> None:
            if result is None:
                report_progress(ctx, i - 1, n, f"probing {shape.label()}")
            else:
                report_progress(ctx, i, n, f"probed {shape.label()}: {result.tokens_per_s:,.0f} tokens/s")

        return ProbeOut(shapes=probe_runs(plan.finetune_runs, plan.spec_path, progress, False))

    @one_line
    def scaffold(self, spec: Spec, out: Annotated[str | None, Field(description="Experiment directory "
                                                                    "(default: the spec's).")] = None,
                 force: Annotated[bool, Field(description="Overwrite run configs even where runs have "
                                              "results (destructive).")] = False,
                 gpu: Gpu = None) -> ScaffoldOut:
        """Write runs/<run>/ (run.yaml, job scripts), controls/, submit_all.sh, plan.md, README.md."""
        from tunelab.scaffold.write import scaffold

        path = self._spec(spec)
        self.ws.spec_models(path)
        plan = scaffold(path, self.ws.inside(out, "out") if out else None, force=force, gpu=self._gpu(gpu, path))
        return ScaffoldOut.of(plan, self.ws.shown)

    @one_line
    def run(self, experiment_dir: Exp, runs: RunNames = None,
            force: Annotated[bool, Field(description="Rerun completed runs from scratch (destructive).")] = False
            ) -> RunOut:
        """Start the sweep in the background (`tunelab run`) and return at once; follow it with status. Refused
        first, with validate's one line, where a run to start would fail its checks (data, OOM, disk space). With a
        tune: block, runs whose learning rate no search chose get their combination's search first (as `tune` runs
        it; status's `tuning` lines follow it), then train at the rate it chose, never at the spec's default."""
        from tunelab.execute.status import RowState, status_rows
        from tunelab.plan.validate import checks_before_run
        from tunelab.rundir.experiment import SPEC_FILE, load_runs, select_runs
        from tunelab.tune.sweep import unsearched

        exp = self._experiment(experiment_dir)
        if unsearched(exp, runs, force):  # the search plans from the spec: its paths are held to the root too
            self._spec(self.ws.shown(exp / SPEC_FILE), "experiment_dir")
        chosen = {r.name for r in select_runs(load_runs(exp), runs) if r.kind == "finetune"}
        todo = [r.name for r in status_rows(exp) if r.name in chosen and (force or r.state != RowState.COMPLETED)]
        if not todo:
            return RunOut(experiment_dir=self.ws.shown(exp), submitted=[], pid=None, log=None)
        problems = checks_before_run(exp, list(runs or []), force)  # `tunelab run`'s own checks, answered now
        if problems:
            more = f" (and {len(problems) - 1} more: validate lists them)" if len(problems) > 1 else ""
            raise TunelabError(problems[0] + more)
        pid, log = self.sweeps.start(exp, list(runs or []), force)
        return RunOut(experiment_dir=self.ws.shown(exp), submitted=todo, pid=pid, log=self.ws.shown(log))

    @one_line
    def status(self, experiment_dir: Exp) -> StatusOut:
        """State, progress and ETA of every run and control; why a job failed; whether the sweep is done; the
        sweep re-planned now: its remaining makespan (P10–P90) against the deadline, and what would have to give
        once the deadline is no longer met at P90."""
        from tunelab.execute.status import status_rows
        from tunelab.mcp.models import replanned
        from tunelab.rundir.tuned import tune_dir
        from tunelab.tune.sweep import progress_lines

        exp = self.ws.inside(experiment_dir, "experiment_dir")
        running = self.sweeps.alive(exp)
        try:
            rows = status_rows(exp)
        except TunelabError:  # no runs yet: a search (`tune`) scaffolds them once it ends
            if not tune_dir(exp).is_dir() and not running:
                raise
            return StatusOut.of(self.ws.shown(exp), [], running, self.sweeps.tail(exp),
                                tuning=progress_lines(exp, self._trials(exp)))
        return StatusOut.of(self.ws.shown(exp), rows, running, self.sweeps.tail(exp), replanned(exp, rows),
                            progress_lines(exp, self._trials(exp)))

    @staticmethod
    def _trials(exp: Path) -> int | None:
        """tune.trials of the experiment's spec (None: no spec or no tune: block)."""
        from tunelab.rundir.experiment import SPEC_FILE
        from tunelab.spec import load_spec

        tune = load_spec(exp / SPEC_FILE).tune if (exp / SPEC_FILE).is_file() else None
        return tune.trials if tune is not None else None

    @one_line
    def tune(self, experiment_dir: Exp, trials: Annotated[int | None, Field(
                 ge=1, description="Trials per combination (default: tune.trials of the spec).")] = None) -> TuneOut:
        """Start (or resume) the learning-rate search of the spec's tune: block in the background (`tunelab tune`)
        and return at once; follow it with status (its `tuning` lines). Each trial is a real run under
        tune/<combination>/trial-N, pruned on its validation loss and judged by tune.objective (val_loss, or an
        eval task's metric: each trial that trains its whole budget is then evaluated by a job of its own); an
        out-of-memory trial is retried at a smaller micro-batch like any run. At the end every run is scaffolded at
        its combination's best rate (and its default-lr twin beside it). Refused where the spec has no tune:
        block."""
        from tunelab.rundir.experiment import SPEC_FILE
        from tunelab.tune.sweep import progress_lines

        exp = self.ws.inside(experiment_dir, "experiment_dir")  # its runs may not be scaffolded yet: the spec's
        spec = self._spec(self.ws.shown(exp / SPEC_FILE), "experiment_dir")  # paths are held to the root
        if self._trials(exp) is None:
            raise TunelabError("no tune: block: add one to search learning rates (see docs/spec-reference.md)",
                               file=spec, field="tune")
        pid, log = self.sweeps.start_command("tune", exp, ["--trials", str(trials)] if trials else [])
        return TuneOut(experiment_dir=self.ws.shown(exp), pid=pid, log=self.ws.shown(log),
                       tuning=progress_lines(exp, trials or self._trials(exp)))

    @one_line
    def cancel(self, experiment_dir: Exp, runs: Annotated[list[str] | None, Field(
                   description="Runs or controls to cancel.")] = None,
               all_runs: Annotated[bool, Field(description="Cancel every run's jobs (must be explicit).")] = False
               ) -> CancelOut:
        """Cancel the queued or running jobs of the named runs (or all, with all_runs=true)."""
        from tunelab.execute.status import cancel

        if not runs and not all_runs:
            raise TunelabError("name the runs to cancel, or pass all_runs=true to cancel every run", field="runs")
        exp = self.ws.inside(experiment_dir, "experiment_dir")
        return CancelOut(cancelled_jobs=cancel(exp, None if all_runs else runs, console=quiet()))

    @one_line
    def eval(self, experiment_dir: Exp, runs: RunNames = None,
             epochs: Annotated[str | None, Field(description="last, all, or e.g. 0,2 (default: the spec's).")] = None,
             force: Annotated[bool, Field(description="Re-evaluate checkpoints that have scores.")] = False,
             ctx: Context | None = None) -> EvalOut:
        """Evaluate fine-tuned checkpoints, controls and eval-only runs with inspect-ai (waits until scored;
        reports progress task by task)."""
        from tunelab.evaluate.sweep import evaluate_experiment
        from tunelab.rundir.experiment import load_runs, select_runs

        exp = self._experiment(experiment_dir)
        names = [r.name for r in select_runs(load_runs(exp), runs)]
        # all at once, so that the targets of one base model go in one pass: a notification as each task ends
        done = evaluate_experiment(exp, names, epochs, force=force, console=quiet(),
                                   progress=lambda i, n, what: report_progress(ctx, i, n, f"evaluated {what}"))
        return EvalOut.of(done)

    @one_line
    def results(self, experiment_dir: Exp) -> ResultsOut:
        """State, training metrics and every eval score (with 95 % intervals) of every run, from the ledger."""
        from tunelab.ledger.results import collect_results

        return ResultsOut.of(collect_results(self.ws.inside(experiment_dir, "experiment_dir")))

    @one_line
    def report(self, experiment_dir: Exp) -> ReportOut:
        """Write report/report.md and report.html (works mid-sweep: partial); also the resource report.md."""
        from tunelab.mcp.resources import report_uri
        from tunelab.report.build import build_report

        exp = self.ws.inside(experiment_dir, "experiment_dir")
        files = build_report(exp)
        return ReportOut.of(files, self.ws.shown, report_uri(self.ws, exp))
