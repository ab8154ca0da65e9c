import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.plan.design import expand_runs
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


DESIGN_IN_A_PROCESS = """
import json, sys
from pathlib import Path
from tunelab.plan.design import expand_runs
from tunelab.spec import parse_spec
runs = expand_runs(parse_spec(json.loads(sys.argv[1])), Path("/spec"), Path(sys.argv[2]))
print(json.dumps([r.model_dump(mode="json") for r in runs]))
"""


def test_the_same_spec_designs_the_same_runs_in_any_process(tmp_path):
    """Names, order and every field, in two interpreters whose str hashes (set and dict-of-set order) differ."""
    spec = {**SPEC, "factors": {**SPEC["factors"], "model": ["big", "small"], "seed": [3, 1]}}
    outs = [subprocess.run([sys.executable, "-c", DESIGN_IN_A_PROCESS, json.dumps(spec), str(tmp_path)],
                           capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")]
    assert outs[0] == outs[1]
    runs = json.loads(outs[0])
    # the model varies slowest, the other factors in the order written (values too), the last fastest; then the
    # controls, one per model
    assert [r["name"] for r in runs][:3] == ["big_r4_lr0.001_s3", "big_r4_lr0.001_s1", "big_r4_lr0.002_s3"]
    assert len(runs) == 2 * 2 * 2 * 2 + 2


def test_naming_collision_is_an_error(tmp_path):
    spec = parse_spec({**SPEC, "naming": "{model}_r{lora_rank}"})
    with pytest.raises(TunelabError, match="gives the name 'small_r4' to two runs"):
        expand_runs(spec, Path("/spec"), tmp_path)


def test_no_controls_and_model_factor_subset(tmp_path):
    spec = parse_spec({**SPEC, "controls": False, "factors": {"model": ["big"], "lora_rank": [8]}})
    runs = expand_runs(spec, Path("/spec"), tmp_path)
    assert [r.name for r in runs] == ["big_r8"]
