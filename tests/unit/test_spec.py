from pathlib import Path

import pytest
import yaml

from tunelab.errors import TunelabError
from tunelab.spec import load_spec


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "experiment.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


GOOD = {
    "name": "exp1",
    "models": [{"name": "m1", "path": "models/m1"}],
    "datasets": [{"name": "d1", "path": "data.json"}],
    "prompt": "Capitalize: {input}",
    "factors": {"lora_rank": [4, 16]},
}


def test_valid_spec_loads_with_defaults(tmp_path):
    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.training.epochs == 3
    assert spec.training.effective_lora_alpha == 16.0
    assert spec.naming_pattern() == "{model}_r{lora_rank}"


@pytest.mark.parametrize(
    "patch, field, words",
    [
        ({"trainig": {}}, "trainig", "unknown key"),
        ({"training": {"lora_rnak": 4}}, "training.lora_rnak", "unknown key"),
        ({"training": {"epochs": "three"}}, "training.epochs", "valid integer"),
        ({"prompt": "Capitalize this word"}, "prompt", "at least one field"),
        ({"prompt": "{input} {0}"}, "prompt", "must name a field"),
        ({"factors": {"prompt": ["{input}", "plain"]}}, "factors.prompt[1]", "at least one field"),
        ({"datasets": [{"name": "d", "path": "d.json", "train": "t.json"}]}, "datasets[0]", "not both"),
        ({"datasets": [{"name": "d", "path": "d.json", "split": {"validation": 0.6, "test": 0.5}}]},
         "datasets[0].split", "sum below 1"),
        ({"datasets": [{"name": "d", "path": "d.json", "eval_only": True}]}, "datasets", "every dataset is eval_only"),
        ({"eval": {"tasks": [{"name": "x", "builtin": "choice", "dataset": "nope"}]}}, "eval.tasks[0].dataset",
         "not one of datasets"),
        ({"eval": {"tasks": ["bleu"]}}, "eval.tasks[0]", "not a built-in"),
        ({"eval": {"tasks": ["exact_match", "exact_match"]}}, "eval", "duplicate"),
        ({"eval": {"epochs": [-1]}}, "eval.epochs", "0 or more"),
        ({"factors": {"lora_rank": [4, "big"]}}, "factors.lora_rank[1]", "valid integer"),
        ({"factors": {"colour": [1]}}, "factors.colour", "unknown factor"),
        ({"factors": {"model": ["nope"]}}, "factors.model[0]", "not one of models"),
        ({"models": []}, "models", "at least 1"),
        ({"naming": "{model}_{seed}"}, "naming", "not swept"),
        ({"eval": {"task": "bleu"}}, "eval.task", "exact_match"),
    ],
)
def test_bad_spec_names_file_and_field(tmp_path, patch, field, words):
    data = {**GOOD, **patch}
    path = _write(tmp_path, data)
    with pytest.raises(TunelabError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: {field}: "), msg
    assert words in msg


def test_missing_required_field(tmp_path):
    data = dict(GOOD)
    del data["models"]
    with pytest.raises(TunelabError, match=r"experiment.yaml: models: Field required"):
        load_spec(_write(tmp_path, data))


def test_broken_yaml_reports_line(tmp_path):
    path = _write(tmp_path, "name: x\nmodels: [\n  - oops: : :\n")
    with pytest.raises(TunelabError, match=r"experiment.yaml: line \d+, column \d+: not valid YAML"):
        load_spec(path)


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(TunelabError, match="must be a YAML mapping"):
        load_spec(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(TunelabError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
