"""The spec's `tune:` block: every mistake is one line naming the file and the field at fault."""

from pathlib import Path

import pytest
import yaml

from tunelab.errors import TunelabError
from tunelab.spec import load_spec

GOOD = {
    "name": "exp1",
    "models": [{"name": "m1", "path": "models/m1"}, {"name": "m2", "path": "models/m2"}],
    "datasets": [{"name": "d1", "path": "data.json"}],
    "prompt": "Capitalize: {input}",
    "factors": {"model": ["m1", "m2"], "lora_rank": [4, 16]},
    "training": {"seed": 7},
    "tune": {"learning_rate": {"low": 1.0e-5, "high": 3.0e-3, "log": True}, "per": ["lora_rank"], "trials": 4},
}


def _spec(tmp_path: Path, **patch) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **patch}, sort_keys=False))
    return path


def _tune(**patch) -> dict:
    return {**GOOD["tune"], **patch}


def test_a_tune_block_loads_with_its_defaults(tmp_path):
    spec = load_spec(_spec(tmp_path, tune={"learning_rate": {"low": 1e-5, "high": 1e-3}}))
    tune = spec.tune
    assert tune is not None and tune.learning_rate.log and tune.trials == 8 and tune.budget == 0.25
    assert tune.objective == "val_loss" and tune.per is None
    assert tune.per_factors(spec.factors) == ["model", "lora_rank"] and tune.sampler_seed(spec.training.seed) == 7
    assert load_spec(_spec(tmp_path, tune=_tune(seed=3))).tune.sampler_seed(spec.training.seed) == 3  # type: ignore[union-attr]
    assert load_spec(_spec(tmp_path, tune=None)).tune is None


@pytest.mark.parametrize("objective", ["val_loss", "accuracy", "exact_match/accuracy"])
def test_objectives_the_evaluation_produces_are_accepted(tmp_path, objective):
    assert load_spec(_spec(tmp_path, tune=_tune(objective=objective))).tune.objective == objective  # type: ignore[union-attr]


def test_a_task_files_metric_is_accepted_under_its_name(tmp_path):
    spec = load_spec(_spec(tmp_path, eval={"tasks": [{"name": "mine", "file": "task.py"}]},
                           tune=_tune(objective="mine/f1")))
    assert spec.tune is not None and spec.tune.objective == "mine/f1"


@pytest.mark.parametrize(
    "patch, field, words",
    [
        ({"tune": _tune(lerning_rate=1)}, "tune.lerning_rate", "unknown key"),
        ({"tune": _tune(learning_rate={"low": 1e-3, "high": 1e-3})}, "tune.learning_rate", "must be below high"),
        ({"tune": _tune(learning_rate={"low": 0.0, "high": 1e-3})}, "tune.learning_rate", "above 0 on a log scale"),
        ({"tune": _tune(learning_rate={"low": 1e-5, "high": 1e-3, "step": 2})}, "tune.learning_rate.step",
         "unknown key"),
        ({"tune": _tune(trials=0)}, "tune.trials", "greater than or equal to 1"),
        ({"tune": _tune(budget=0)}, "tune.budget", "greater than 0"),
        ({"tune": _tune(budget=1.5)}, "tune.budget", "less than or equal to 1"),
        ({"tune": _tune(per=["lora_alpha"])}, "tune.per[0]", "not a factor of the sweep"),
        ({"tune": _tune(per=["model", "model"])}, "tune.per", "named twice"),
        ({"tune": _tune(objective="bleu")}, "tune.objective", "neither val_loss nor a metric"),
        ({"tune": _tune(objective="exact_match/mae")}, "tune.objective", "neither val_loss nor a metric"),
        ({"factors": {"learning_rate": [1e-4, 1e-3]}, "tune": _tune(per=[])}, "tune.learning_rate",
         "factor of the sweep"),
        ({"tune": {"per": []}}, "tune.learning_rate", "Field required"),
        ({"stages": [{"name": "one"}, {"name": "two"}]}, "tune.learning_rate", "a learning rate per stage"),
    ],
)
def test_a_bad_tune_block_names_file_and_field(tmp_path, patch, field, words):
    path = _spec(tmp_path, **patch)
    with pytest.raises(TunelabError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: {field}: ") and "\n" not in msg, msg
    assert words in msg, msg


def test_per_may_name_the_model_and_dataset_axes(tmp_path):
    spec = load_spec(_spec(tmp_path, factors={"lora_rank": [4, 16]}, tune=_tune(per=["model", "dataset"])))
    assert spec.tune is not None and spec.tune.per_factors(spec.factors) == ["model", "dataset"]


def test_a_linear_range_may_start_at_zero(tmp_path):
    spec = load_spec(_spec(tmp_path, tune=_tune(learning_rate={"low": 0.0, "high": 1e-3, "log": False})))
    assert spec.tune is not None and spec.tune.learning_rate.low == 0.0
