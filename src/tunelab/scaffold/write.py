"""scaffold: one self-contained directory per run (run.yaml + job script), a submit-all script
and a README. Everything is checked before anything is written, so a bad spec writes nothing — a sweep that
does not fit the free space or quota of the experiment directory's filesystem (--out) included."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import ValidationError

from tunelab.catalog import GPU
from tunelab.data.splits import DATA_DIR, PROVENANCE_FILE
from tunelab.data.verify import provenance_json
from tunelab.errors import TunelabError
from tunelab.execute.executors import executor_class
from tunelab.execute.retry import differs_only_by_retries
from tunelab.fsutil import atomic_write_text, dump_yaml, load_yaml
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import Plan, make_plan
from tunelab.rundir.config import RUN_FILE, RunConfig, load_run_config
from tunelab.rundir.experiment import SPEC_FILE
from tunelab.spec import Strategy, resolve_path


def kept_runs(runs: list[RunConfig], texts: dict[str, str], force: bool) -> dict[str, RunConfig]:
    """The runs whose run.yaml on disk stays (a retry's), by name; raises for a run with results whose config
    would change, unless `force` (which keeps nothing); a retry's (a smaller batch after an OOM) is kept, or the next
    job would fail the same way again. `texts`: each run's newly designed run.yaml."""
    changed = _changed_configs(runs, texts)
    kept: dict[str, RunConfig] = {}
    for cfg in runs:
        if cfg.name not in changed:
            continue
        old = changed[cfg.name]
        if force:
            continue
        if old is not None and differs_only_by_retries(old, cfg):
            kept[cfg.name] = old  # as a retry left it
            continue
        # the estimate moves with history: not a change of the run
        same = old is not None and old.model_copy(update={"estimate": None}) == cfg.model_copy(update={"estimate": None})
        if not same and ((cfg.run_dir / "status.json").exists() or (cfg.run_dir / "eval").exists()):
            raise TunelabError(
                f"run '{cfg.name}' already has results and its config would change; "
                "use --force to overwrite, or scaffold into another --out directory",
                file=cfg.run_dir / RUN_FILE,
            )
    return kept


def _changed_configs(runs: list[RunConfig], texts: dict[str, str]) -> dict[str, RunConfig | None]:
    """run.yaml files on disk that differ from the newly designed ones, parsed (None: not a valid run config
    any more) and placed where they are (an experiment scaffolded again after a move compares like for like);
    the rest are not parsed at all: re-scaffolding a 1,000-run sweep stays fast."""
    changed: dict[str, RunConfig | None] = {}
    for cfg in runs:
        path = cfg.run_dir / RUN_FILE
        if path.is_file():
            text = path.read_text()
            if text != texts[cfg.name]:
                try:
                    changed[cfg.name] = RunConfig.model_validate(load_yaml(text) or {}).located(path.parent)
                except (ValidationError, TunelabError):
                    changed[cfg.name] = None
    return changed


@dataclass(frozen=True)
class FileText:
    """One file to write: where, what, and how."""

    path: Path
    text: str
    durable: bool = True  # fsync; a generated file that a rerun rewrites identically skips it
    executable: bool = False  # a script (job.sh, submit_all.sh)


def write_files(files: list[FileText]) -> None:
    """Write each file atomically (a file that already holds its text is left alone)."""
    for f in files:
        atomic_write_text(f.path, f.text, durable=f.durable)
        if f.executable:
            f.path.chmod(0o755)


_env = Environment(loader=PackageLoader("tunelab.scaffold", "templates"), undefined=StrictUndefined, keep_trailing_newline=True)
_env.filters["q"] = lambda v: shlex.quote(str(v))  # a path in a shell script (submit_all.sh's check of where it is)


def _job_script(cfg: RunConfig, python: str) -> FileText:
    """A fine-tuned run's job.sh: every executor's job runs it."""
    return FileText(cfg.run_dir / "job.sh", _env.get_template("job.sh.j2").render(run=cfg, python=python),
                    durable=False, executable=True)


def unedited_job_script(script: Path) -> bool:
    """Whether a run's job.sh holds what scaffold writes for its run.yaml with this interpreter: then a job forked
    from a warm process (execute/warm_jobs.py) runs what the script would; an edited one (a module loaded, another
    interpreter, a variable set) runs as written. An unreadable script or run.yaml is not unedited."""
    try:
        cfg = load_run_config(script.parent / RUN_FILE)
        return script.read_text() == _job_script(cfg, sys.executable).text
    except (OSError, UnicodeDecodeError, TunelabError, ValidationError):
        return False


def write_job_script(cfg: RunConfig, python: str) -> Path:
    """A fine-tuned run's job.sh and the executor's own scripts beside it (a learning-rate search's trial)."""
    job = _job_script(cfg, python)
    write_files([job])
    executor_class(cfg.resources.executor).scaffold_scripts(cfg, python)
    return job.path


def _resolved_spec_dump(plan: Plan) -> dict:
    """The spec as run, with model and dataset paths made absolute (so the copy works anywhere)."""
    data = plan.spec.model_dump(mode="json", exclude_none=True)
    base = plan.spec_path.parent
    for m in data["models"]:
        m["path"] = str(resolve_path(base, m["path"]))
    for d in data["datasets"]:
        d["path"] = str(resolve_path(base, d["path"]))
    return data


def scaffold(spec_path: str | Path, out_dir: str | Path | None = None, force: bool = False,
             gpu: GPU | None = None) -> Plan:
    """Plan the spec, then render every file of the experiment — run.yaml (with the plan's recorded estimate),
    job.sh, submit_all.sh, the README, plan.md, the spec as run, data/provenance.json — before the first is written,
    and write them together (scaffold/files.py) after the executor's own scripts; a run.yaml that a retry changed
    stays (scaffold/keep.py)."""
    plan = make_plan(spec_path, out_dir, gpu=gpu)
    if plan.storage_problem:  # where the runs will write (--out): refused before anything is written
        raise TunelabError(plan.storage_problem)
    for i, cfg in enumerate(plan.runs):
        est = plan.recorded[cfg.name]
        update: dict = {"estimate": est}
        if cfg.resources.distributed == "auto" and est.strategy == Strategy.FSDP:  # the plan's choice, for the job
            update["resources"] = cfg.resources.model_copy(update={"distributed": Strategy.FSDP})
        plan.runs[i] = cfg.model_copy(update=update)
    texts = {cfg.name: dump_yaml(cfg.model_dump(mode="json")) for cfg in plan.runs}
    exp, python = plan.experiment_dir, sys.executable
    files = [FileText(exp / SPEC_FILE, dump_yaml(_resolved_spec_dump(plan)))] \
        if plan.spec_path != (exp / SPEC_FILE).resolve() else []
    # job.sh names only its run and experiment, which a run.yaml kept below shares (it differs by retries alone)
    files += [_job_script(cfg, python) for cfg in plan.finetune_runs]
    files.append(FileText(exp / "plan.md", render_plan_md(plan)))  # of the runs as designed
    files.append(FileText(exp / DATA_DIR / PROVENANCE_FILE, provenance_json(plan.datasets)))
    kept = kept_runs(plan.runs, texts, force)
    plan.runs[:] = [kept.get(cfg.name, cfg) for cfg in plan.runs]
    # Generated files are written atomically but without fsync: a rerun rewrites them identically.
    files += [FileText(cfg.run_dir / RUN_FILE, texts[cfg.name], durable=False) for cfg in plan.runs if cfg.name not in kept]
    # every step by hand, as the runs' executor would take them
    executor = executor_class(plan.runs[0].resources.executor if plan.runs else plan.spec.resources.executor)
    template, extra = executor.submit_all(plan.runs)
    files.append(FileText(exp / "submit_all.sh", _env.get_template(template).render(
        experiment=plan.spec.name, experiment_dir=exp, runs=plan.finetune_runs, controls=plan.controls, python=python,
        **extra), executable=True))
    files.append(FileText(exp / "README.md", _env.get_template("README.md.j2").render(
        spec=plan.spec, n_ft=len(plan.finetune_runs), n_ctl=len(plan.controls))))
    for cfg in plan.runs:  # the executor's own scripts (Slurm: job.sbatch + eval.sbatch; `tunelab run` rewrites them)
        executor_class(cfg.resources.executor).scaffold_scripts(cfg, python)
    write_files(files)
    return plan
