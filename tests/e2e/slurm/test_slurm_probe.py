"""`tunelab probe --executor slurm`: the probe runs as one short job on the cluster; the job writes its
measurements beside the experiment and the coordinator records them in the history."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
runner = CliRunner()


def test_probe_as_a_slurm_job_records_the_jobs_measurements(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    spec = write_spec(factors={"lora_rank": [4, 8]}, resources={"executor": "slurm", "gpus_per_run": 0})
    res = runner.invoke(app, ["probe", str(spec), "--executor", "slurm"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "probe job" in flat and "submitted (2 shape(s))" in flat and "2 shape(s) probed" in flat
    probe_dir = spec.parent / "probe"
    assert json.loads((probe_dir / "results.json").read_text())  # what the job wrote
    assert list(probe_dir.glob("slurm-probe-*.out"))
    rows = json.loads(runner.invoke(app, ["history", "--json"]).stdout)["rows"]
    assert sorted(r["lora_rank"] for r in rows) == [4, 8]
    assert all(r["kind"] == "probed" and r["device"] == "cpu" and r["tokens_per_s"] > 0 for r in rows)
