"""`tunelab adopt`: runs trained elsewhere become runs of a tunelab experiment, so `eval` and `report` work on them. The
user's spec gives what cannot be read from the runs (model, data, tasks); the adopted runs are the design, their
differing training facts its factors. Each run directory is written under a temporary name and renamed; sources are only
read; a source that cannot be adopted is reported and the others adopted."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.adopt.sources import AdoptedRun, read_source
from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_yaml
from tunelab.ledger import store as ledger
from tunelab.rundir import layout
from tunelab.rundir.checkpoints import epoch_dir
from tunelab.rundir.config import RUN_FILE, RunConfig, save_run_config
from tunelab.rundir.experiment import SPEC_FILE, load_runs
from tunelab.rundir.metrics import write_metrics
from tunelab.rundir.status import Status, now_iso, write_new_status
from tunelab.rundir.summary import Summary, write_summary
from tunelab.spec import ModelSpec, TrainingConfig

TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
COPIED = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "tokenizer.json",
          "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass
class AdoptResult:
    experiment_dir: Path
    adopted: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _read_all(sources: list[Path], problems: list[str]) -> list[AdoptedRun]:
    runs: dict[str, AdoptedRun] = {}
    for src in sources:
        try:
            run = read_source(src)
        except TunelabError as exc:
            problems.append(str(exc))
            continue
        if run.name in runs:
            problems.append(f"{run.source}: a run named '{run.name}' is adopted already (from {runs[run.name].source});"
                            " rename one of the directories")
            continue
        problems += run.problems
        if not run.checkpoints:
            problems.append(f"{run.source}: no checkpoint with an adapter: nothing to evaluate, not adopted")
            continue
        runs[run.name] = run
    return list(runs.values())


def _factors(runs: list[AdoptedRun]) -> list[str]:
    """Training facts whose values differ between the adopted runs."""
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


def _run_config(template: RunConfig, run: AdoptedRun, factors: list[str], model: ModelSpec | None) -> RunConfig:
    fields = TrainingConfig.model_fields
    known = {k: v for k, v in run.config.items() if k in fields}
    if template.training is None:
        raise TunelabError("the spec's first fine-tuning run has no training to adopt runs into", field=template.name)
    training = TrainingConfig.model_validate({**template.training.model_dump(), **known})
    return template.model_copy(update={
        "name": run.name, "training": training, "factors": {k: run.config.get(k) for k in factors},
        **({"model": model} if model else {})})


# What an adopted run's summary.json holds: what another trainer's output dir tells.
ADOPTED_SUMMARY = ("steps", "epochs", "final_loss", "best_loss", "final_val_loss", "best_val_loss", "duration_s",
                   "tokens_per_s", "peak_memory_gib", "memory_kind", "checkpoints", "adopted_from", "adopted_kind")


def _summary(run: AdoptedRun) -> Summary:
    losses = [r.loss for r in run.rows if r.loss is not None]
    vals = [r.val_loss for r in run.rows if r.val_loss is not None]
    return Summary(steps=run.steps, epochs=run.epochs, final_loss=losses[-1] if losses else None,
                   best_loss=min(losses) if losses else None, final_val_loss=vals[-1] if vals else None,
                   best_val_loss=min(vals) if vals else None, duration_s=run.duration_s,
                   tokens_per_s=run.tokens_per_s, peak_memory_gib=run.peak_memory_gib, memory_kind=run.memory_kind,
                   checkpoints=[layout.epoch_name(i) for i in range(len(run.checkpoints))],
                   adopted_from=str(run.source), adopted_kind=run.kind)


def _levels(runs: list[AdoptedRun], key: str) -> list:
    values = []
    for r in runs:
        if r.config.get(key) not in values:
            values.append(r.config.get(key))
    return sorted(values, key=repr) if not all(isinstance(v, (int, float)) for v in values) else sorted(values)


def _write_run(cfg: RunConfig, run: AdoptedRun, base_model: Path) -> None:
    """The run's directory, complete, or nothing: written beside, renamed into place."""
    final = cfg.run_dir
    tmp = final.with_name(f".adopting-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_run_config(cfg, tmp / RUN_FILE)
        write_metrics(tmp, run.rows, drop_none=True)
        for i, src in enumerate(run.checkpoints):
            dest = epoch_dir(tmp, i)
            dest.mkdir(parents=True)
            for name in COPIED:
                if (src / name).is_file():
                    shutil.copy2(src / name, dest / name)
                elif name in TOKENIZER and (base_model / name).is_file():  # torchtune saves none: the base's
                    shutil.copy2(base_model / name, dest / name)
        write_summary(tmp, _summary(run), keys=ADOPTED_SUMMARY)
        write_new_status(tmp, Status(run=cfg.name, state=layout.COMPLETED, attempt=1, adopted_from=str(run.source),
                                     finished_at=now_iso()))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def adopt(sources: list[Path], out: Path, spec_path: Path, model: Path | None = None) -> AdoptResult:
    """Adopt the runs in `sources` into the experiment `out`, planned from `spec_path` (data, prompt, tasks)."""
    from tunelab.plan.planner import make_plan
    from tunelab.scaffold.write import _resolved_spec_dump

    out = out.resolve()
    result = AdoptResult(out)
    runs = _read_all(sources, result.problems)
    if not runs:
        raise TunelabError("nothing adopted: " + "; ".join(result.problems or ["no sources"]), file=sources[0])
    plan = make_plan(spec_path, experiment_dir=out, estimates=False)
    template = plan.finetune_runs[0]
    base = ModelSpec(name=model.name, path=str(model.resolve())) if model else None
    factors = _factors(runs)
    out.mkdir(parents=True, exist_ok=True)
    spec_data = _resolved_spec_dump(plan)
    spec_data["factors"] = {k: _levels(runs, k) for k in factors}  # what the report shows as the design
    atomic_write_yaml(out / SPEC_FILE, spec_data)
    for run in runs:
        cfg = _run_config(template, run, factors, base)
        _write_run(cfg, run, Path(cfg.model.path))
        result.adopted.append(run.name)
    for control in (c for c in plan.runs if c.kind == "control"):
        save_run_config(control.model_copy(update={"model": base}) if base else control)
    ledger.ingest_all(out, load_runs(out))
    return result
