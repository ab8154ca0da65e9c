"""A full disk during a checkpoint save, on a real small filesystem this test mounts (a size-limited tmpfs; a
loop-mounted ext4 image where tmpfs is refused): the job stops with one line naming the checkpoint and the space
it needed, leaves nothing half-published (the previous checkpoint stays the resume point), and once the space is
freed `tunelab run` resumes and ends equal to an uninterrupted run of the same spec (same steps, token counts and
losses; the same adapter within float tolerance). The disk is filled by a filler file sized from the
uninterrupted run's own files, so that the second checkpoint's save is the write that does not fit."""

from __future__ import annotations

import json

import pytest
import yaml
from smallfs import fill, small_filesystem
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.fsutil import human_bytes, read_json, read_jsonl
from tunelab.rundir.config import load_run_config

pytestmark = pytest.mark.slow

SIZE_KIB = 12 * 1024  # the experiment (two 1.2 MB trainer checkpoints, logs, ledger) and the filler
EPOCH_STEPS = 11  # 82 training rows at batch 8
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}


@pytest.fixture
def small_fs(tmp_path, request):
    return small_filesystem(tmp_path, request, SIZE_KIB)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from tunelab.data.capitalization import make_capitalization_dataset

    return make_capitalization_dataset(5, 102, tmp_path_factory.mktemp("small"), 0.8, seed=1)  # 82 train rows


def _experiment(root, model, data):
    spec = {"name": "full", "models": [{"name": "tiny", "path": str(model)}],
            "datasets": [{"name": "caps", "path": str(data)}], "prompt": "Capitalize: {input}",
            "factors": {"lora_rank": [4]}, "controls": False,
            "training": {"epochs": 2, "learning_rate": 0.002, "batch_size": 8, "max_seq_len": 64,
                         "logging_steps": 1, "dtype": "float32", "modules_to_save": ["embed_tokens", "lm_head"]}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.yaml").write_text(yaml.safe_dump(spec))
    for command in ("plan", "scaffold"):
        res = CliRunner().invoke(app, [command, str(root / "experiment.yaml")])
        assert res.exit_code == 0, res.output
    return root / "runs" / "tiny_r4"


def _tunelab_run(exp, *flags):
    return CliRunner().invoke(app, ["run", str(exp), *flags])


def _blocks(path) -> int:
    """Bytes the files under path occupy (whole blocks: what a filesystem charges for them)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def _fill(mnt, ref_run) -> int:
    """A filler leaving the run what it wrote before its second save plus half that save: the save fails."""
    second = ref_run / "trainer_state" / f"checkpoint-{2 * EPOCH_STEPS}"
    later = [second, ref_run / "checkpoints" / "epoch_1", ref_run / "summary.json"]
    before = _blocks(ref_run) - sum(_blocks(p) for p in later)
    fill(mnt, before + _blocks(second) // 2)
    return _blocks(second)


def _bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_predicted_storage(run_dir) -> None:
    """What plan predicted (run.yaml's estimate.disk) against the files the run really left."""
    disk = load_run_config(run_dir).estimate.disk
    state = run_dir / "trainer_state" / f"checkpoint-{EPOCH_STEPS}"
    assert disk.adapter_bytes == (state / "adapter_model.safetensors").stat().st_size  # exact
    assert disk.optimizer_bytes == pytest.approx((state / "optimizer.pt").stat().st_size, rel=0.02)
    assert disk.trainer_state_bytes == pytest.approx(_bytes(state), rel=0.05)
    assert disk.epoch_checkpoint_bytes == pytest.approx(_bytes(run_dir / "checkpoints" / "epoch_0"), rel=0.02)
    kept = len(list((run_dir / "trainer_state").glob("checkpoint-*")))
    assert (disk.trainer_states_kept, disk.epoch_checkpoints) == (kept, 2)
    assert disk.total_bytes - disk.eval_bytes == pytest.approx(_bytes(run_dir), rel=0.1)  # not evaluated here


def _check_reason_shown(exp, run_output: str, reason: str) -> None:
    """The job's own line is what run's summary, `tunelab status` and the MCP status tool say of the run."""
    from mcp_tool import tool

    lines = [line for line in run_output.splitlines() if line.startswith("error:")]
    assert lines == [f"error: tiny_r4 FAILED: {reason}", "error: 1 run(s) did not complete; see runs/<run>/train.log"]
    res = CliRunner().invoke(app, ["status", str(exp)])
    assert res.exit_code == 0 and f"tiny_r4 FAILED: {reason}" in res.output.splitlines(), res.output
    answer = tool(exp.parent, "status", {"experiment_dir": exp.name})
    assert not answer.is_error, answer.content
    row = next(r for r in answer.structured_content["runs"] if r["name"] == "tiny_r4")
    assert (row["state"], row["reason"]) == ("failed", reason)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("loss") is not None}


def test_full_disk_in_a_checkpoint_save_stops_cleanly_and_resumes_equal(tmp_path, small_fs, tiny_model,
                                                                          small_dataset):
    from safetensors.torch import load  # from bytes: a memory map of the file would keep the mount busy

    ref = _experiment(tmp_path / "ref", tiny_model, small_dataset)
    res = _tunelab_run(ref.parent.parent)
    assert res.exit_code == 0, res.output
    expected = read_json(ref / "summary.json")
    assert expected["steps"] == 2 * EPOCH_STEPS
    _check_predicted_storage(ref)

    run = _experiment(small_fs / "exp", tiny_model, small_dataset)
    save_bytes = _fill(small_fs, ref)
    # the disk fills while the run trains (another writer, here the filler): run's own check of the free space
    # before the first job would refuse the sweep already, so it is skipped, as a person expecting room would
    res = _tunelab_run(run.parent.parent, "--no-checks")
    assert res.exit_code == 1, res.output
    failed = run / "trainer_state" / f"checkpoint-{2 * EPOCH_STEPS}"
    log = (run / "train.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
    assert errors[0].startswith(f"error: no space left on {failed} (needs ~"), errors[0]
    assert errors[0].endswith(f"free space, then `tunelab run` resumes from checkpoint-{EPOCH_STEPS}")
    _check_reason_shown(run.parent.parent, res.output, errors[0].removeprefix("error: "))
    number, unit = errors[0].split("needs ~")[1].split(",")[0].split()
    assert float(number) * UNITS[unit] == pytest.approx(save_bytes, rel=0.1)  # the size of the save that failed
    status = read_json(run / "status.json")
    assert status["state"] == "failed" and str(failed) in status["error"]
    # nothing half-published: the failed save is gone, the first one complete and the resume point
    assert not failed.exists() and not (run / "checkpoints" / "epoch_1").exists()
    assert not list((run / "checkpoints").glob(".*"))
    assert sorted(p.name for p in (run / "trainer_state").glob("checkpoint-*")) == [f"checkpoint-{EPOCH_STEPS}"]
    assert (run / "trainer_state" / f"checkpoint-{EPOCH_STEPS}" / "tunelab_counters.json").is_file()

    (small_fs / "filler").unlink()
    res = _tunelab_run(run.parent.parent)
    assert res.exit_code == 0, res.output
    assert read_json(run / "status.json")["resumed_from"] == f"checkpoint-{EPOCH_STEPS}"
    got = read_json(run / "summary.json")
    for key in ("steps", "checkpoints", "tokens", "nonpad_tokens", "train_examples"):
        assert got[key] == expected[key], key
    losses, ref_losses = _losses(run), _losses(ref)
    assert sorted(losses) == sorted(ref_losses) == list(range(1, 2 * EPOCH_STEPS + 1))  # every step once
    for step, loss in ref_losses.items():
        assert losses[step] == pytest.approx(loss, rel=1e-4), step
    for epoch in ("epoch_0", "epoch_1"):
        a, b = (load((r / "checkpoints" / epoch / "adapter_model.safetensors").read_bytes()) for r in (run, ref))
        assert sorted(a) == sorted(b)
        for name in a:
            assert a[name].allclose(b[name], rtol=1e-4, atol=1e-6), (epoch, name)
    assert json.loads((run / "checkpoints" / "epoch_1" / "adapter_config.json").read_text())["r"] == 4

    res = CliRunner().invoke(app, ["report", str(run.parent.parent)])  # the storage section: predicted / measured
    assert res.exit_code == 0, res.output
    adapter = human_bytes((run / "checkpoints" / "epoch_1" / "adapter_model.safetensors").stat().st_size)
    md = (run.parent.parent / "report" / "report.md").read_text()
    assert f"| tiny_r4 | {adapter} / {adapter} | 2 / 2 | 2 / 2 |" in md, md[md.find("## Storage"):][:3000]

