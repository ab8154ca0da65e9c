from pathlib import Path

import pytest

from tunelab.plan.design import expand_runs
from tunelab.errors import TunelabError
from tunelab.spec import parse_spec

SPEC = {
    "name": "e",
    "models": [{"name": "small", "path": "/m/small"}, {"name": "big", "path": "/m/big"}],
    "datasets": [{"name": "d", "path": "d.json"}],
    "prompt": "{input}",
    "factors": {"lora_rank": [4, 16], "learning_rate": [0.001, 0.002]},
    "training": {"lora_alpha": None},
}


def test_full_factorial_plus_one_control_per_model(tmp_path):
    runs = expand_runs(parse_spec(SPEC), Path("/spec"), tmp_path)
    ft = [r for r in runs if r.kind == "finetune"]
    ctl = [r for r in runs if r.kind == "control"]
    assert len(ft) == 2 * 2 * 2 and len(ctl) == 2
    assert [r.name for r in ft[:4]] == ["small_r4_lr0.001", "small_r4_lr0.002", "small_r16_lr0.001", "small_r16_lr0.002"]
    assert [r.name for r in ctl] == ["small_base", "big_base"]
    r = ft[2]
    assert r.training.lora_rank == 16 and r.training.learning_rate == 0.001
    assert r.training.effective_lora_alpha == 32
    assert r.model.path == "/m/small" and r.dataset.path == "/spec/d.json"
    assert r.run_dir == tmp_path.resolve() / "runs" / "small_r16_lr0.001"
    assert ctl[0].training is None and ctl[0].run_dir.parent.name == "controls"


def test_deterministic(tmp_path):
    a = expand_runs(parse_spec(SPEC), Path("/spec"), tmp_path)
    b = expand_runs(parse_spec(SPEC), Path("/spec"), tmp_path)
    assert [r.model_dump() for r in a] == [r.model_dump() for r in b]


def test_naming_collision_is_an_error(tmp_path):
    spec = parse_spec({**SPEC, "naming": "{model}_r{lora_rank}"})
    with pytest.raises(TunelabError, match="gives the name 'small_r4' to two runs"):
        expand_runs(spec, Path("/spec"), tmp_path)


def test_no_controls_and_model_factor_subset(tmp_path):
    spec = parse_spec({**SPEC, "controls": False, "factors": {"model": ["big"], "lora_rank": [8]}})
    runs = expand_runs(spec, Path("/spec"), tmp_path)
    assert [r.name for r in runs] == ["big_r8"]
