"""Factors -> runs: the full factorial over models x datasets x swept training fields, plus controls.

Deterministic: the same spec always gives the same runs, in the same order, with the same names.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.models.check import eval_only_base
from tunelab.rundir.config import RunConfig, StageConfig
from tunelab.spec import DatasetSpec, ExperimentSpec, ModelSpec, TaskSpec, TrainingConfig, factor_field, resolve_path
from tunelab.spec.evaluation import GraderSpec
from tunelab.spec.stages import split_stage_factor, stage_training
from tunelab.userconfig import merge_resources

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _fmt_level(value: object) -> str:
    """Render a factor level for a file name: 0.002 -> 2e-03, 16 -> 16, True -> true."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_fmt_level(v) for v in value)
    if isinstance(value, dict):  # order: {by_field: difficulty} -> by_field-difficulty
        return "-".join(f"{k}-{_fmt_level(v)}" for k, v in value.items())
    return str(value)


def safe_name(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "run"


def _task_paths(task: TaskSpec, spec_dir: Path) -> TaskSpec:
    """A task with its file and its grader's model directory resolved against the spec file."""
    if not task.file:
        return task
    update: dict = {"file": str(resolve_path(spec_dir, task.file))}
    if isinstance(task.grader, GraderSpec):
        update["grader"] = task.grader.model_copy(update={"path": str(resolve_path(spec_dir, task.grader.path))})
    return task.model_copy(update=update)


def _common(spec: ExperimentSpec, spec_dir: Path, experiment_dir: Path) -> dict:
    """What every run of the experiment shares (resolved paths, eval, resources)."""
    task_datasets = {t.dataset for t in spec.eval.resolved_tasks() if t.dataset}
    eval_spec = spec.eval
    if spec.stages and "epochs" not in eval_spec.model_fields_set:  # a staged run: evaluated after each stage
        eval_spec = eval_spec.model_copy(update={"epochs": "stages"})
    return dict(
        experiment=spec.name,
        experiment_dir=str(experiment_dir),
        system_prompt=spec.system_prompt,
        chat_template=spec.chat_template,
        chat_template_date=spec.chat_template_date,
        eval=eval_spec.model_copy(update={"tasks": [_task_paths(t, spec_dir) for t in spec.eval.tasks]}),
        eval_datasets={n: resolve_dataset(spec.dataset(n), spec_dir) for n in sorted(task_datasets)},
        resources=merge_resources(spec.resources),  # + the user's config file; the spec wins
    )


def resolve_dataset(d: DatasetSpec, spec_dir: Path) -> DatasetSpec:
    """The dataset with every path absolute (run.yaml must not depend on where it is read from)."""
    paths = {k: str(resolve_path(spec_dir, v)) for k in ("path", "train", "validation", "test")
             if (v := getattr(d, k))}
    return d.model_copy(update=paths)


def expand_runs(spec: ExperimentSpec, spec_dir: Path, experiment_dir: Path) -> list[RunConfig]:
    """All runs of the experiment: fine-tuned runs first (factorial order), then one control per model x dataset."""
    models = {m.name: m for m in spec.models}
    datasets = {d.name: d for d in spec.datasets}
    swept = spec.swept_factors()
    pattern = spec.naming_pattern()
    experiment_dir = experiment_dir.resolve()

    def model_ref(name: str) -> ModelSpec:
        m = models[name]
        return ModelSpec(name=m.name, path=str(resolve_path(spec_dir, m.path)))

    def dataset_ref(name: str) -> DatasetSpec:
        return resolve_dataset(datasets[name], spec_dir)

    common = _common(spec, spec_dir, experiment_dir)
    prompts = spec.prompt_names()
    swept_prompt = "prompt" in spec.factors
    runs: list[RunConfig] = []
    seen: dict[str, dict] = {}
    levels = [spec.factors[k] for k in swept]
    for model_name in spec.model_levels():
        for dataset_name, (prompt_name, prompt) in itertools.product(spec.dataset_levels(), prompts.items()):
            for combo in itertools.product(*levels) if swept else [()]:
                factors = dict(zip(swept, combo))
                run_factors = {k: v for k, v in factors.items() if not split_stage_factor(k)}
                # validated as a whole (levels such as order: {by_field: X} become their models, and cross-field
                # rules see the combination); model_copy(update=) would skip validation
                training = type(spec.training).model_validate({**spec.training.model_dump(), **run_factors})
                fields = {"model": model_name, "dataset": dataset_name, "prompt": prompt_name}
                fields.update({factor_field(k): _fmt_level(v) for k, v in factors.items()})
                name = safe_name(pattern.format(**fields))
                all_factors = {"model": model_name, "dataset": dataset_name,
                               **({"prompt": prompt_name} if swept_prompt else {}), **factors}
                if name in seen:
                    raise TunelabError(
                        f"naming pattern '{pattern}' gives the name '{name}' to two runs "
                        f"({seen[name]} and {all_factors}); add the missing factor to the pattern",
                        field="naming",
                    )
                seen[name] = all_factors
                runs.append(
                    RunConfig(
                        name=name,
                        kind="finetune",
                        model=model_ref(model_name),
                        dataset=dataset_ref(dataset_name),
                        prompt=prompt,
                        factors=all_factors,
                        training=training,
                        stages=resolve_stages(spec, training, factors, dataset_ref(dataset_name), dataset_ref),
                        **common,
                    )
                )
    if spec.controls:
        runs += _controls(spec, common, prompts, seen, model_ref, dataset_ref)
    runs += eval_only_runs(spec, spec_dir, common, seen)
    return runs


def resolve_stages(spec: ExperimentSpec, training: TrainingConfig, factors: dict, run_dataset: DatasetSpec,
                   dataset_ref) -> list[StageConfig]:
    """The run's stages, resolved: each stage's training is the run's plus the stage's own fields plus this
    run's `STAGE.FIELD` factor levels; its dataset is the stage's or the run's."""
    out = []
    for stage in spec.stages:
        swept = {f: v for k, v in factors.items() if (sf := split_stage_factor(k)) and sf[0] == stage.name
                 for f in [sf[1]]}
        out.append(StageConfig(name=stage.name, optimizer=stage.optimizer,
                               dataset=dataset_ref(stage.dataset) if stage.dataset else run_dataset,
                               training=stage_training(training, {**stage.training, **swept})))
    return out


def _controls(spec: ExperimentSpec, common: dict, prompts: dict[str, str | None], seen: dict[str, dict],
              model_ref, dataset_ref) -> list[RunConfig]:
    """One base-model control per model x dataset (x prompt, when prompts are swept: a control's score
    depends on its prompt as much as a run's)."""
    many_datasets = len(spec.dataset_levels()) > 1
    swept_prompt = "prompt" in spec.factors
    out = []
    for model_name, dataset_name, (prompt_name, prompt) in itertools.product(
            spec.model_levels(), spec.dataset_levels(), prompts.items()):
        parts = [model_name] + ([dataset_name] if many_datasets else []) + ([prompt_name] if swept_prompt else [])
        name = safe_name("_".join(parts + ["base"]))
        if name in seen:
            raise TunelabError(f"control name '{name}' collides with a run name", field="naming")
        seen[name] = {"model": model_name}
        factors = {"model": model_name, "dataset": dataset_name, **({"prompt": prompt_name} if swept_prompt else {})}
        out.append(RunConfig(name=name, kind="control", model=model_ref(model_name), dataset=dataset_ref(dataset_name),
                             prompt=prompt, factors=factors, training=None, **common))
    return out


def eval_only_runs(spec: ExperimentSpec, spec_dir: Path, common: dict, seen: dict[str, dict]) -> list[RunConfig]:
    """Adapters or models trained elsewhere: evaluated with the spec's prompt format, never trained."""
    out = []
    models = {m.name: m for m in spec.models}
    first_dataset = resolve_dataset(spec.dataset(spec.dataset_levels()[0]), spec_dir)
    for i, e in enumerate(spec.eval_only):
        if e.name in seen:
            raise TunelabError(f"'{e.name}' is also the name of a run or control", field=f"eval_only[{i}].name")
        seen[e.name] = {"eval_only": e.name}
        checkpoint = resolve_path(spec_dir, e.path)
        named = models[e.model] if e.model else None
        base = eval_only_base(checkpoint, resolve_path(spec_dir, named.path) if named else None, f"eval_only[{i}]")
        out.append(RunConfig(
            name=e.name, kind="eval_only",
            model=ModelSpec(name=named.name if named else safe_name(base.name), path=str(base)),
            dataset=first_dataset, prompt=e.prompt if e.prompt is not None else spec.prompt_levels()[0],
            checkpoint=str(checkpoint), factors={"eval_only": e.name}, training=None, **common))
    return out
