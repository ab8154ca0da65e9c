"""What a newcomer on a laptop (no GPU) meets before anything trains, done as they would do it through the CLI:
a CPU sweep validates as a CPU sweep (no GPU asked for, the machine's RAM reported), `tunelab run` makes the
same checks before its first job, and `scaffold --out DIR` / `run` check the free space of the filesystem the
runs will write to (a real small filesystem, tests/smallfs.py), refusing with one line naming DIR, the space
needed and free, and training.keep_checkpoints. Nothing here trains."""

from __future__ import annotations

import json
import shutil

import pytest
from smallfs import fill, small_filesystem
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.fsutil import human_bytes

TRAIN_ROWS, BATCH = 320, 8  # the session's capitalization set (400 words, 80 % train) at the spec's batch


@pytest.fixture
def cpu_only(monkeypatch, tmp_path):
    """This machine's CPU as the target, as on a laptop: no GPU visible, none named (spec or user config)."""
    from tunelab.catalog import detect_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("TUNELAB_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user config: nothing names a GPU
    if detect_gpu() is not None:
        pytest.skip("a GPU stays visible here: the laptop's setting cannot be made")


def _tunelab(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _ram_gib() -> float:
    """MemTotal of /proc/meminfo: the machine's RAM, read another way than validate reads it."""
    kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    return kib / 2**20


def test_a_cpu_sweep_validates_as_a_cpu_sweep(cpu_only, write_spec):
    spec = write_spec(factors={"lora_rank": [4, 16]})
    for target in (spec.parent, spec):  # `tunelab validate EXP` and `EXP/experiment.yaml`
        res = _tunelab("validate", target)
        assert res.exit_code == 0, res.output
        assert "--gpu" not in res.output and not _errors(res.output)
        assert "ok: 2 run(s) validated for this machine's CPU" in res.output
    res = _tunelab("validate", spec, "--json")
    assert res.exit_code == 0, res.output
    checks = json.loads(res.stdout)["checks"]
    assert [c["run"] for c in checks] == ["tiny_r4", "tiny_r16"]
    for c in checks:
        assert c["device"] == "cpu" and c["peak_memory_gib"] is None and c["max_batch_size"] is None
        assert c["device_memory_gib"] == pytest.approx(_ram_gib(), abs=0.1)
        assert c["steps"] == TRAIN_ROWS // BATCH  # one epoch: the data was measured, as on a GPU
        assert c["errors"] == []


def test_a_machine_that_does_not_tell_its_ram_is_said_so_not_reported_as_zero(cpu_only, write_spec, monkeypatch):
    """An OS without SC_PHYS_PAGES (os.sysconf raises ValueError for a name it does not know): validate warns per
    run, its ok line says the RAM is unknown, and --json holds null, never 0."""
    import os

    real = os.sysconf

    def sysconf(name):
        if name == "SC_PHYS_PAGES":
            raise ValueError("unrecognized configuration name")
        return real(name)

    monkeypatch.setattr(os, "sysconf", sysconf)
    spec = write_spec(factors={"lora_rank": [4, 16]})
    res = _tunelab("validate", spec)
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: {run}: this machine's RAM is unknown (os.sysconf could not read it: unrecognized "
                      "configuration name): nothing checks this CPU run's memory (host memory is not modelled); "
                      "watch the job's memory yourself" for run in ("tiny_r4", "tiny_r16")], res.output
    assert "validated for this machine's CPU (RAM unknown;" in res.output
    checks = json.loads(_tunelab("validate", spec, "--json").stdout)["checks"]
    assert [(c["device"], c["device_memory_gib"], len(c["warnings"])) for c in checks] == [("cpu", None, 1)] * 2


def test_a_failing_cpu_sweep_is_refused_by_validate_and_by_run_alike(cpu_only, write_spec):
    steps = TRAIN_ROWS // BATCH
    spec = write_spec(factors={"lora_rank": [4]}, training={"warmup_steps": 1000})
    expected = f"tiny_r4: warmup_steps 1000 exceeds the run's {steps} optimizer steps"
    res = _tunelab("validate", spec)
    assert res.exit_code == 1 and _errors(res.output) == [f"error: {spec}: {expected}"], res.output
    for command in ("plan", "scaffold"):
        assert _tunelab(command, spec).exit_code == 0
    res = _tunelab("run", spec.parent)  # the same check, before the first job starts
    assert res.exit_code == 1 and _errors(res.output) == [f"error: {expected}"], res.output
    run_dir = spec.parent / "runs" / "tiny_r4"
    assert sorted(p.name for p in run_dir.iterdir()) == ["job.sh", "run.yaml"]  # nothing started


def _predicted_peak(spec) -> int:
    """What plan predicts the sweep's runs hold at their peaks (run.yaml's estimate.disk, via plan --json)."""
    res = _tunelab("plan", spec, "--json")
    assert res.exit_code == 0, res.output
    return sum(e["disk"]["peak_bytes"] for e in json.loads(res.stdout)["estimates"].values() if e)


def _refusal(output: str, where, needs: int, free: int) -> None:
    """One line: DIR, the space needed and free, and the lever."""
    errors = _errors(output)
    assert len(errors) == 1, output
    line = errors[0]
    assert f"({where})" in line and "training.keep_checkpoints" in line, line
    assert f"needs ~{human_bytes(needs)} more" in line and f"but {human_bytes(free)} is free" in line, line


def test_scaffold_and_run_check_the_filesystem_the_runs_write_to(cpu_only, write_spec, tmp_path, request):
    spec = write_spec(factors={"lora_rank": [4, 16]})
    needs = _predicted_peak(spec)  # planned where the spec is: a large filesystem, it fits
    assert needs > 0
    mnt = small_filesystem(tmp_path, request, (2 * needs + (1 << 20)) // 1024)
    filler = fill(mnt, needs // 3)
    out = mnt / "exp"
    res = _tunelab("scaffold", spec, "--out", out)
    assert res.exit_code == 1
    _refusal(res.output, out, needs, shutil.disk_usage(mnt).free)
    assert not out.exists()  # refused before anything is written

    filler.unlink()
    res = _tunelab("scaffold", spec, "--out", out)
    assert res.exit_code == 0, res.output
    held = sum(p.stat().st_size for p in (out / "runs").rglob("*") if p.is_file())  # run.yaml, job.sh
    fill(mnt, needs // 3)  # another writer takes the room before the sweep starts
    res = _tunelab("run", out)
    assert res.exit_code == 1
    _refusal(res.output, out, needs - held, shutil.disk_usage(mnt).free)
    for run in ("tiny_r4", "tiny_r16"):
        assert not (out / "runs" / run / "status.json").exists()  # no job started


def test_an_assistant_meets_the_same_checks(cpu_only, tmp_path, tiny_model, caps_dataset, spec_in):
    """The MCP tools on that laptop: validate answers for the CPU, run refuses with validate's line."""
    import yaml
    from mcp_tool import tool

    root = tmp_path / "lab"  # the assistant's workspace holds the model and the data
    shutil.copytree(tiny_model, root / "models" / "tiny")
    (root / "data").mkdir()
    shutil.copy(caps_dataset, root / "data" / caps_dataset.name)
    spec = spec_in(root / "exp", factors={"lora_rank": [4]}, training={"warmup_steps": 1000})
    doc = yaml.safe_load(spec.read_text())
    doc["models"][0]["path"], doc["datasets"][0]["path"] = "../models/tiny", f"../data/{caps_dataset.name}"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    expected = f"tiny_r4: warmup_steps 1000 exceeds the run's {TRAIN_ROWS // BATCH} optimizer steps"
    checked = tool(root, "validate", {"path": "exp/experiment.yaml"})
    assert not checked.is_error, checked.content
    (check,) = checked.structured_content["checks"]
    assert (check["device"], check["errors"]) == ("cpu", [expected])
    assert _tunelab("scaffold", spec).exit_code == 0
    refused = tool(root, "run", {"experiment_dir": "exp"})
    assert refused.is_error and refused.content[0].text.endswith(expected), refused.content
    assert not (root / "exp" / "runs" / "tiny_r4" / "status.json").exists()  # no sweep started
