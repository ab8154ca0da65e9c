"""run.yaml's `estimate:` is the typed RunEstimate, written by scaffold and read by field by its readers; files
written before it was typed (a plain mapping, keys missing or unknown to this version) still load."""

from __future__ import annotations

import yaml

from tunelab.catalog import resolve_gpu
from tunelab.execute.local_jobs import run_need
from tunelab.execute.slurm_jobs import estimated_time_limit
from tunelab.rundir.config import load_run_config, save_run_config
from tunelab.rundir.estimate import RunEstimate
from tunelab.scaffold.write import scaffold


def test_an_old_estimate_mapping_loads_and_its_readers_see_its_fields(write_spec):
    spec = write_spec()
    scaffold(spec, gpu=resolve_gpu("H100"))
    path = spec.parent / "runs" / "tiny_r4" / "run.yaml"
    data = yaml.safe_load(path.read_text())
    assert set(data["estimate"]) == set(RunEstimate.model_fields)  # the keys on disk are the field names
    # an older file: fewer keys, and one this version does not know
    data["estimate"] = {"steps": 40, "seconds": 125.5, "peak_memory_gib": 3.25, "slurm_time_limit": "00:15:00",
                        "from_the_future": [1, 2]}
    path.write_text(yaml.safe_dump(data))
    cfg = load_run_config(path)
    assert isinstance(cfg.estimate, RunEstimate)
    assert (cfg.estimate.steps, cfg.estimate.stages, cfg.estimate.processes) == (40, [], 1)
    assert estimated_time_limit(cfg) == "00:15:00"
    need = run_need(cfg, gpus_visible=1)
    assert (need.seconds, need.memory_gib) == (125.5, 3.25)
    save_run_config(cfg, path)
    assert yaml.safe_load(path.read_text())["estimate"]["from_the_future"] == [1, 2]
