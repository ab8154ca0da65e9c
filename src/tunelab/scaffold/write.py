"""scaffold: one self-contained directory per run (run.yaml + job script), a submit-all script
and a README. Everything is checked before anything is written, so a bad spec writes nothing — a sweep that
does not fit the free space or quota of the experiment directory's filesystem (--out) included."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import ValidationError

from tunelab.catalog import GPU
from tunelab.errors import TunelabError
from tunelab.execute.executors import executor_class
from tunelab.execute.retry import differs_only_by_retries
from tunelab.forecast.run_predictions import recorded_estimates
from tunelab.fsutil import atomic_write_text, atomic_write_yaml, dump_yaml, load_yaml
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import Plan, make_plan, write_provenance
from tunelab.rundir.config import RUN_FILE, RunConfig
from tunelab.rundir.experiment import SPEC_FILE
from tunelab.spec import Strategy, resolve_path

_env = Environment(loader=PackageLoader("tunelab.scaffold", "templates"), undefined=StrictUndefined, keep_trailing_newline=True)
_env.filters["q"] = lambda v: shlex.quote(str(v))  # a path in a shell script (submit_all.sh's check of where it is)


def _render(name: str, **ctx) -> str:
    return _env.get_template(name).render(**ctx)


def write_job_script(cfg: RunConfig, python: str) -> Path:
    """A fine-tuned run's job.sh (every executor's job runs it) and the executor's own scripts beside it."""
    job = cfg.run_dir / "job.sh"
    atomic_write_text(job, _render("job.sh.j2", run=cfg, python=python), durable=False)
    job.chmod(0o755)
    executor_class(cfg.resources.executor).scaffold_scripts(cfg, python)
    return job


def _resolved_spec_dump(plan: Plan) -> dict:
    """The spec as run, with model and dataset paths made absolute (so the copy works anywhere)."""
    data = plan.spec.model_dump(mode="json", exclude_none=True)
    base = plan.spec_path.parent
    for m in data["models"]:
        m["path"] = str(resolve_path(base, m["path"]))
    for d in data["datasets"]:
        d["path"] = str(resolve_path(base, d["path"]))
    return data


def _changed_configs(plan: Plan, texts: dict[str, str]) -> dict[str, RunConfig | None]:
    """run.yaml files on disk that differ from the newly designed ones, parsed (None: not a valid run config
    any more) and placed where they are (an experiment scaffolded again after a move compares like for like);
    the rest are not parsed at all: re-scaffolding a 1,000-run sweep stays fast."""
    changed: dict[str, RunConfig | None] = {}
    for cfg in plan.runs:
        path = cfg.run_dir / RUN_FILE
        if path.is_file():
            text = path.read_text()
            if text != texts[cfg.name]:
                try:
                    changed[cfg.name] = RunConfig.model_validate(load_yaml(text) or {}).located(path.parent)
                except (ValidationError, TunelabError):
                    changed[cfg.name] = None
    return changed


def _check_not_clobbering(plan: Plan, changed: dict[str, RunConfig | None], force: bool) -> None:
    """A run that already has results keeps its config unless --force: results must match their config."""
    if force:
        return
    for cfg in plan.runs:
        if cfg.name not in changed:
            continue
        old = changed[cfg.name]
        # the estimate moves with history: not a change of the run
        if old is not None and (old.model_copy(update={"estimate": None}) == cfg.model_copy(update={"estimate": None})
                                or differs_only_by_retries(old, cfg)):
            continue  # the same run, or as a retry left it (kept, see scaffold())
        if (cfg.run_dir / "status.json").exists() or (cfg.run_dir / "eval").exists():
            raise TunelabError(
                f"run '{cfg.name}' already has results and its config would change; "
                "use --force to overwrite, or scaffold into another --out directory",
                file=cfg.run_dir / RUN_FILE,
            )


def scaffold(spec_path: str | Path, out_dir: str | Path | None = None, force: bool = False,
             gpu: GPU | None = None) -> Plan:
    plan = make_plan(spec_path, out_dir, gpu=gpu)
    if plan.storage_problem:  # where the runs will write (--out): refused before anything is written
        raise TunelabError(plan.storage_problem)
    # + each run's evaluation and the sweep's makespan, as the plan predicted them (the report checks them)
    predicted = recorded_estimates(plan.runs, plan.estimates, plan.evaluations, plan.forecast)
    for i, cfg in enumerate(plan.runs):
        est = predicted[cfg.name]
        update: dict = {"estimate": est}
        if cfg.resources.distributed == "auto" and est.strategy == Strategy.FSDP:  # the plan's choice, for the job
            update["resources"] = cfg.resources.model_copy(update={"distributed": Strategy.FSDP})
        plan.runs[i] = cfg.model_copy(update=update)
    texts = {cfg.name: dump_yaml(cfg.model_dump(mode="json")) for cfg in plan.runs}
    changed = _changed_configs(plan, texts)
    _check_not_clobbering(plan, changed, force)
    exp = plan.experiment_dir
    exp.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    if plan.spec_path != (exp / SPEC_FILE).resolve():
        atomic_write_yaml(exp / SPEC_FILE, _resolved_spec_dump(plan))
    atomic_write_text(exp / "plan.md", render_plan_md(plan))
    write_provenance(plan)
    # Generated files are written atomically but without fsync: a rerun rewrites them identically.
    for i, cfg in enumerate(plan.runs):
        old = changed.get(cfg.name)
        if not force and old is not None and differs_only_by_retries(old, cfg):
            cfg = plan.runs[i] = old  # a retry's run.yaml (attempt > 1) stays
        else:
            atomic_write_text(cfg.run_dir / RUN_FILE, texts[cfg.name], durable=False)
        if cfg.kind == "finetune":  # + the executor's own job scripts (Slurm: job.sbatch + eval.sbatch)
            write_job_script(cfg, python)
        else:  # (`tunelab run` rewrites them on submit)
            executor_class(cfg.resources.executor).scaffold_scripts(cfg, python)
    submit = exp / "submit_all.sh"
    # every step by hand, as the runs' executor would take them
    executor = executor_class(plan.runs[0].resources.executor if plan.runs else plan.spec.resources.executor)
    template, extra = executor.submit_all(plan.runs)
    atomic_write_text(submit, _render(template, experiment=plan.spec.name, experiment_dir=exp,
                                      runs=plan.finetune_runs, controls=plan.controls, python=python, **extra))
    submit.chmod(0o755)
    atomic_write_text(exp / "README.md", _render("README.md.j2", spec=plan.spec, n_ft=len(plan.finetune_runs),
                                                 n_ctl=len(plan.controls)))
    return plan
