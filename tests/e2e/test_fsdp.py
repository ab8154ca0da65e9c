"""FSDP that really shards, on CPU (two gloo processes under torchrun), checked against independent expectations:
a one-process run with the same effective batch and data order, an uninterrupted run for a killed-and-resumed
one, and the planner's simulated per-device parameter bytes for what each process really holds.

Tolerance: the runs are float32 and see the same examples in the same order, so they differ only in the order
of reductions (the gradient reduce-scatter over two processes, each process's loss sum over its half of the
batch): a few ulps per operation, ~1e-7 relative as measured, growing slowly over 20 AdamW steps. rtol 1e-5
leaves two orders of magnitude for that and still fails on any real difference (a lost or repeated micro-batch
moves the loss in the third digit, a wrong learning rate or an unsynchronised gradient far more). The adapters'
weights get atol 1e-5 besides: AdamW divides each gradient by its running RMS, so an element whose gradient sits
at rounding level takes a rounding-sized difference up to a full-sized one (measured: 1.3e-6 on one element of
30 tensors); 1e-5 is 1/200 of one Adam step (lr 0.002), which any lost, repeated or unsynchronised step exceeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import alive, wait_for

from tunelab.fsutil import read_json, read_jsonl
from tunelab.rundir.experiment import training_state
from tunelab.scaffold.write import scaffold

pytestmark = pytest.mark.slow

STEPS = 20  # 320 training examples / 16 a step (4 a micro-batch × 2 processes × 2 accumulated, or 8 × 1 × 2)
RTOL, ATOL = 1e-5, 1e-5
TRAINING = {"epochs": 1, "gradient_accumulation_steps": 2, "logging_steps": 1, "validation_every_steps": 10,
            "checkpoint_every": 5}  # no dropout: its masks depend on how the batch is split over processes


def _spec(spec_in, directory: Path, **resources) -> Path:
    processes = resources.get("nproc_per_run", 1)
    return spec_in(directory, factors={"lora_rank": [4]}, controls=False,
                   training={**TRAINING, "batch_size": 8 // processes}, resources={"gpus_per_run": 0, **resources})


def _train(run_yaml: Path, **env: str) -> subprocess.Popen:
    """`tunelab train run.yaml`, its output in train.log (as a job script keeps it)."""
    with open(run_yaml.parent / "train.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(run_yaml)],
                                env=dict(os.environ, HF_HUB_OFFLINE="1", **env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def runs(spec_in, tmp_path_factory):
    """An uninterrupted 2-process FSDP run and a 1-process run of the same effective batch, trained side by side."""
    from tunelab.execute.local_jobs import LocalExecutor
    from tunelab.execute.sweep import run_sweep
    from tunelab.faults import FAULT_OOM_ENV
    from tunelab.rundir.config import load_run_config

    root = tmp_path_factory.mktemp("fsdp")
    spec = _spec(spec_in, root / "fsdp", nproc_per_run=2, distributed="fsdp")
    fsdp = scaffold(spec).runs[0]
    one = scaffold(_spec(spec_in, root / "one")).runs[0]
    single = _train(one.run_dir / "run.yaml")
    scratch = root / "tmp"  # the jobs' temp dir: torchrun's launches leave nothing there, the failed one neither
    scratch.mkdir()
    with pytest.MonkeyPatch.context() as mp:  # the sharded run's first job runs out of memory at micro-batch 4
        mp.setenv(FAULT_OOM_ENV, "2")
        mp.setenv("TMPDIR", str(scratch))
        assert run_sweep(LocalExecutor(), spec.parent) == {fsdp.name: "completed"}
    assert sorted(p.name for p in scratch.iterdir()) == []
    assert single.wait(600) == 0, (one.run_dir / "train.log").read_text()[-3000:]
    retried = load_run_config(fsdp.run_dir / "run.yaml")  # the OOM retry's: micro-batch halved, accumulation doubled
    assert retried.training is not None and retried.attempt == 2
    assert (retried.training.batch_size, retried.training.gradient_accumulation_steps) == (2, 4)
    return retried, one


def _losses(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_jsonl(run_dir / "metrics.jsonl") if r[key] is not None}


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def _assert_same_adapter(a: dict, b: dict) -> None:
    import torch

    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.allclose(a[key], b[key], rtol=RTOL, atol=ATOL), key


def test_two_sharded_processes_train_as_one_process_with_the_same_batch(runs):
    fsdp, one = runs
    summary = read_json(fsdp.run_dir / "summary.json")
    assert summary["distributed"] == "fsdp" and summary["world_size"] == 2
    # the OOM retry kept the effective batch: 2 a micro-batch × 4 accumulated × 2 processes = 8 × 2 × 1
    assert summary["effective_batch_size"] == read_json(one.run_dir / "summary.json")["effective_batch_size"] == 16
    assert "FSDP2: 2 decoder layers and the root sharded over 2 processes (cpu)" in (fsdp.run_dir / "train.log").read_text()
    for key in ("loss", "val_loss", "grad_norm"):
        sharded, single = _losses(fsdp.run_dir, key), _losses(one.run_dir, key)
        assert sorted(sharded) == sorted(single) and len(single) == (STEPS if key != "val_loss" else 2)
        assert sharded == pytest.approx(single, rel=RTOL), key
    # the checkpoint files are a one-process run's: same names, same full tensors (not shards)
    assert sorted(p.name for p in (fsdp.run_dir / "checkpoints" / "epoch_0").iterdir()) == \
        sorted(p.name for p in (one.run_dir / "checkpoints" / "epoch_0").iterdir())
    _assert_same_adapter(_adapter(fsdp.run_dir / "checkpoints" / "epoch_0"),
                         _adapter(one.run_dir / "checkpoints" / "epoch_0"))


def test_the_sharded_adapter_loads_in_peft_alone(runs):
    """PEFT alone, no tunelab and no process group, loads the sharded run's adapter onto the base model and
    computes the same logits as with the one-process run's adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fsdp, one = runs
    ids = torch.tensor([[5, 70, 71, 72, 9, 40]])
    logits = []
    for cfg in (fsdp, one):
        base = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(cfg.run_dir / "checkpoints" / "epoch_0")).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    base_logits = AutoModelForCausalLM.from_pretrained(fsdp.model.path, dtype=torch.float32)(input_ids=ids).logits
    assert not torch.allclose(logits[0], base_logits, atol=1e-3)  # the adapter changed the model
    assert torch.allclose(logits[0], logits[1], rtol=RTOL, atol=1e-5)


def test_each_process_holds_the_simulated_shard_of_the_parameters(runs):
    """Each rank's parameter storage, as FSDP2 allocated it, equals the planner's simulated sharded term."""
    from tunelab.estimate.memory import MemoryInputs
    from tunelab.estimate.peak import predict_peak, step_shape
    from tunelab.spec import Strategy

    fsdp, _ = runs
    t = fsdp.training
    inputs = MemoryInputs.of_training(t, "float32")
    sim = predict_peak(fsdp.model.path, inputs, step_shape(t.batch_size, t.max_seq_len, False, None), 2,
                       Strategy.FSDP).simulated
    one = predict_peak(fsdp.model.path, inputs, step_shape(t.batch_size, t.max_seq_len, False, None)).simulated
    assert sim is not None and one is not None
    processes = read_json(fsdp.run_dir / "summary.json")["processes"]
    assert [p["rank"] for p in processes] == [0, 1]
    for p in processes:
        assert p["frozen_param_bytes"] == sim.sharded_frozen
        assert p["trainable_param_bytes"] == sim.sharded_trainable
    # and it is a shard: about half of the whole model's frozen bytes on each of the two
    assert sim.sharded_frozen is not None and 0.45 < sim.sharded_frozen / one.weights < 0.55


@pytest.mark.fault_run  # a long fault run (a kill, then the resume): `make test-faults`, outside `make test`
def test_a_sharded_run_killed_mid_epoch_resumes_to_the_uninterrupted_adapter(runs, spec_in, tmp_path):
    from tunelab.execute.local_jobs import LocalExecutor
    from tunelab.execute.sweep import run_sweep

    fsdp, _ = runs
    spec = _spec(spec_in, tmp_path / "killed", nproc_per_run=2, distributed="fsdp")
    cfg = scaffold(spec).runs[0]
    proc = _train(cfg.run_dir / "run.yaml", TUNELAB_FAULT_STEP_S="0.4")  # paced, so the kill lands mid-epoch
    try:  # after the mid-epoch save at step 10 is complete and two more steps are logged
        status = lambda: read_json(cfg.run_dir / "status.json", default={})  # noqa: E731
        assert wait_for(lambda: status().get("step", 0) >= 12 and "last_checkpoint" in status(), 300)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers, with no warning
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rank0 = read_json(cfg.run_dir / "status.json")["pid"]  # a worker: it dies with its launcher (PDEATHSIG), soon after
    assert wait_for(lambda: not alive(rank0), 30), "a worker outlived its launcher"
    killed_at = read_json(cfg.run_dir / "status.json")["step"]
    assert 10 < killed_at < STEPS and training_state(cfg.run_dir) == "interrupted"

    assert run_sweep(LocalExecutor(), spec.parent) == {cfg.name: "completed"}
    status_after = read_json(cfg.run_dir / "status.json")
    assert status_after["restarts"] == 1 and status_after["resumed_from"] in ("checkpoint-10", "checkpoint-15")
    summary = read_json(cfg.run_dir / "summary.json")
    assert summary["distributed"] == "fsdp" and summary["steps"] == STEPS and summary["effective_batch_size"] == 16
    # every step logged once, with the uninterrupted run's losses: data position, optimizer, scheduler, RNG restored
    resumed, straight = _losses(cfg.run_dir, "loss"), _losses(fsdp.run_dir, "loss")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == pytest.approx(straight, rel=RTOL)
    _assert_same_adapter(_adapter(cfg.run_dir / "checkpoints" / "epoch_0"),
                         _adapter(fsdp.run_dir / "checkpoints" / "epoch_0"))


def test_a_finished_sharded_worker_runs_its_atexit_handlers(spec_in, tmp_path):
    """A finished worker leaves by os._exit (train/distributed.py exit_finished_worker, which skips teardown), after
    the atexit handlers interpreter exit would run: each rank's handler, registered at its start by a sitecustomize
    module, writes its file after the run completed."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import atexit, os\n"
        "if 'WORLD_SIZE' in os.environ:  # a torchrun worker, not the launcher\n"
        "    path = os.path.join(os.environ['ATEXIT_DIR'], 'rank' + os.environ['RANK'])\n"
        "    atexit.register(lambda: open(path, 'w').write(str(os.getpid())))\n")
    spec = spec_in(tmp_path / "exp", factors={"lora_rank": [4]}, controls=False,
                   training={**TRAINING, "batch_size": 4, "max_steps": 2, "checkpoint_every": None},
                   resources={"gpus_per_run": 0, "nproc_per_run": 2, "distributed": "fsdp"})
    cfg = scaffold(spec).runs[0]
    pythonpath = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    proc = _train(cfg.run_dir / "run.yaml", PYTHONPATH=pythonpath, ATEXIT_DIR=str(tmp_path))
    assert proc.wait(600) == 0, (cfg.run_dir / "train.log").read_text()[-3000:]
    assert training_state(cfg.run_dir) == "completed"
    written = {p.name: int(p.read_text()) for p in tmp_path.glob("rank*")}
    assert sorted(written) == ["rank0", "rank1"]
    assert written["rank0"] == read_json(cfg.run_dir / "status.json")["pid"]  # this run's rank 0, not another's
