"""What plan checks of staged runs (and of curriculum orders) beyond a run's own dataset: every stage's
dataset is verified like a run's (a dataset only a stage trains on too), and every `order: {by_field: X}`
is read from the rows it will order, through the same code the job uses, so a missing field or a row
without a value is refused before any job starts, naming the stage."""

from __future__ import annotations

from pathlib import Path

from tunelab.data.ordering import field_values, fixed_order
from tunelab.errors import TunelabError
from tunelab.rundir.config import RunConfig
from tunelab.spec import ExperimentSpec, TrainingConfig
from tunelab.spec.training import ByField


def _stage_validates(spec: ExperimentSpec, index: int) -> bool:
    """Whether stage `index` may compute a validation loss (then its dataset needs a validation split)."""
    stage = spec.stages[index]
    if f"{stage.name}.validation_every_steps" in spec.factors:
        return True
    if "validation_every_steps" in stage.training:
        return bool(stage.training["validation_every_steps"])
    return bool(spec.training.validation_every_steps or "validation_every_steps" in spec.factors)


def stage_dataset_needs(spec: ExperimentSpec) -> dict[str, set[str]]:
    """Dataset -> the splits its stages train on (a stage without a dataset trains on the run's)."""
    needed: dict[str, set[str]] = {}
    for i, stage in enumerate(spec.stages):
        for name in [stage.dataset] if stage.dataset else spec.dataset_levels():
            needed.setdefault(name, {"train"})
            if _stage_validates(spec, i):
                needed[name].add("validation")
    return needed


def dataset_error(spec: ExperimentSpec, index: int, exc: TunelabError, spec_path: Path) -> TunelabError:
    """The error of `datasets[index]`, naming the first stage that trains on it when one names it."""
    name = spec.datasets[index].name
    stage = next((i for i, s in enumerate(spec.stages) if s.dataset == name), None)
    if stage is None:
        return TunelabError(str(exc), file=spec_path, field=f"datasets[{index}]")
    return TunelabError(f"stage '{spec.stages[stage].name}' trains on dataset '{name}' (datasets[{index}]): {exc}",
                        file=spec_path, field=f"stages[{stage}].dataset")


def _trainings(cfg: RunConfig) -> list[tuple[int | None, RunConfig, TrainingConfig]]:
    """(stage index or None, the run as that part trains, its training) for each part a run trains."""
    if cfg.stages:
        return [(i, cfg.stage_config(i), s.training) for i, s in enumerate(cfg.stages)]
    return [(None, cfg, cfg.training)] if cfg.training is not None else []


def check_orders(runs: list[RunConfig], spec_path: Path) -> None:
    """Every `order: {by_field: X}` of a run or stage: the field is in its dataset's train rows, each row has
    a value, and the values sort — checked once per dataset × field, as the job will order them."""
    seen: set[tuple[str, str]] = set()
    for cfg in runs:
        for index, part, t in _trainings(cfg):
            if not isinstance(t.order, ByField) or (part.dataset.name, t.order.by_field) in seen:
                continue
            seen.add((part.dataset.name, t.order.by_field))
            try:
                values = field_values(part, t.order.by_field)
                fixed_order(t.order, [0] * len(values), values)
            except TunelabError as exc:
                if index is None:
                    raise TunelabError(f"{cfg.name}: dataset '{part.dataset.name}': {exc.message}", file=spec_path,
                                       field="training.order.by_field") from None
                raise TunelabError(f"stage '{cfg.stages[index].name}' of {cfg.name} orders dataset "
                                   f"'{part.dataset.name}' by {t.order.by_field!r}: {exc.message}", file=spec_path,
                                   field=f"stages[{index}].order.by_field") from None
