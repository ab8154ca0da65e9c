"""Factors -> runs: the full factorial over models x datasets x swept training fields, plus controls.

Deterministic: the same spec always gives the same runs, in the same order, with the same names.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.runconfig import RunConfig
from tunelab.spec import DatasetSpec, ExperimentSpec, ModelSpec, resolve_path
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
    return str(value)


def safe_name(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "run"


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
        d = datasets[name]
        return d.model_copy(update={"path": str(resolve_path(spec_dir, d.path))})

    common = dict(
        experiment=spec.name,
        experiment_dir=str(experiment_dir),
        prompt=spec.prompt,
        system_prompt=spec.system_prompt,
        chat_template=spec.chat_template,
        eval=spec.eval,
        resources=merge_resources(spec.resources),  # + the user's config file; the spec wins
    )
    runs: list[RunConfig] = []
    seen: dict[str, dict] = {}
    levels = [spec.factors[k] for k in swept]
    for model_name in spec.model_levels():
        for dataset_name in spec.dataset_levels():
            for combo in itertools.product(*levels) if swept else [()]:
                factors = dict(zip(swept, combo))
                training = spec.training.model_copy(update=factors)
                # Re-validate: model_copy(update=) skips validation.
                training = type(training).model_validate(training.model_dump())
                fields = {"model": model_name, "dataset": dataset_name}
                fields.update({k: _fmt_level(v) for k, v in factors.items()})
                name = safe_name(pattern.format(**fields))
                all_factors = {"model": model_name, "dataset": dataset_name, **factors}
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
                        factors=all_factors,
                        training=training,
                        **common,
                    )
                )
    if spec.controls:
        many_datasets = len(spec.dataset_levels()) > 1
        for model_name in spec.model_levels():
            for dataset_name in spec.dataset_levels():
                name = safe_name(f"{model_name}_{dataset_name}_base" if many_datasets else f"{model_name}_base")
                if name in seen:
                    raise TunelabError(f"control name '{name}' collides with a run name", field="naming")
                seen[name] = {"model": model_name}
                runs.append(
                    RunConfig(
                        name=name,
                        kind="control",
                        model=model_ref(model_name),
                        dataset=dataset_ref(dataset_name),
                        factors={"model": model_name, "dataset": dataset_name},
                        training=None,
                        **common,
                    )
                )
    return runs
