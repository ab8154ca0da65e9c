"""Really trains a tiny model (CPU, seconds) and really kills and resumes a training job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from loadrule import check_contended, slowdown_by_rule

from tunelab.faults import FIRED_ENV, KILL_ENV
from tunelab.fsutil import read_json, read_jsonl
from tunelab.ledger import history
from tunelab.rundir.config import load_run_config, save_run_config
from tunelab.rundir.experiment import training_state
from tunelab.rundir.identity import training_key
from tunelab.scaffold.write import scaffold
from tunelab.train.job import train

pytestmark = pytest.mark.slow


def test_train_writes_metrics_checkpoints_and_summary(finished_sweep):
    """What a training job leaves, read from tiny_r16 of the shared sweep (tests/e2e/conftest.py), which `tunelab run`
    trained: rank 16, 320 examples / 8 = 40 steps per epoch, a training row every 10 steps, validation every 40."""
    epochs, steps = finished_sweep.epochs, 40 * finished_sweep.epochs
    run_dir = finished_sweep.exp / "runs" / "tiny_r16"
    summary = read_json(run_dir / "summary.json")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train_rows = [r for r in rows if r["loss"] is not None]
    val_rows = [r for r in rows if r["val_loss"] is not None]
    assert [r["step"] for r in train_rows] == list(range(10, steps + 1, 10))
    assert [r["step"] for r in val_rows] == list(range(40, steps + 1, 40))
    for key in ("step", "epoch", "loss", "lr", "tokens", "nonpad_tokens", "tokens_per_s", "peak_memory_gib", "elapsed_s"):
        assert key in train_rows[-1]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] * 0.7  # it learns
    assert summary["steps"] == steps
    assert summary["checkpoints"] == [f"epoch_{e}" for e in range(epochs)]
    for e in range(epochs):
        d = run_dir / "checkpoints" / f"epoch_{e}"
        assert (d / "adapter_model.safetensors").stat().st_size > 0
        assert read_json(d / "adapter_config.json")["r"] == 16
        assert (d / "tokenizer.json").is_file()
    assert read_json(run_dir / "status.json")["state"] == "completed"
    assert training_state(run_dir) == "completed"
    # every checkpoint save timed (the trainer's and its epoch_N publish): one per epoch here (no checkpoint_every),
    # their time part of the overhead, which holds the 4 validations too; the run's history row keeps the mean,
    # which plans price saves with (forecast/savecost.py)
    assert summary["saves"] == epochs and summary["save_s"] > 0
    assert summary["save_s"] * epochs <= summary["overhead_s"] + 1e-3  # each rounded (to 0.1 and 1 ms)
    (row,) = [r for r in history.load(everything=True) if r.key == training_key(load_run_config(run_dir))]
    assert row.save_s == summary["save_s"]
    # the CPU it trained on, as the kernel's /proc/cpuinfo names it: a history row priced only this CPU's runs
    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    assert summary["cpu_model"] == row.cpu_model == cpu
    assert summary["final_loss"] == train_rows[-1]["loss"] and summary["final_val_loss"] == val_rows[-1]["val_loss"]
    # 5-letter words in one prompt format: all the same length, so no padding at all, and each logged row has
    # counted step × 8 examples of that length
    assert summary["nonpad_fraction"] == 1.0
    assert summary["tokens"] == summary["nonpad_tokens"] == epochs * read_json(run_dir / "packing.json")["tokens"]
    per_example = read_json(run_dir / "packing.json")["tokens"] / 320
    assert [r["tokens"] for r in train_rows] == [r["step"] * 8 * per_example for r in train_rows]
    # steady throughput: the tokens over the training time from the first row past warm-up to the last
    first, last = train_rows[1], train_rows[-1]
    assert summary["tokens_per_s"] == pytest.approx(
        (last["tokens"] - first["tokens"]) / (last["train_time_s"] - first["train_time_s"]), rel=1e-3)
    # step cost (train/step_cost.py): the per-token part is the slope through its two timed points (half and twice
    # the micro-batch of 8), the fixed part what is left of the run's steady step time after it, each at least 0 —
    # worked out here from the figures summary.json recorded (an inconsistent split fails here; how the two parts
    # come out on this machine's timings, e.g. a fixed part clamped at 0 when the load changed, is not the point)
    cost = summary["step_cost"]
    assert [p["batch"] for p in cost["points"]] == [4, 16] and cost["tokens_per_step"] == 8 * per_example
    (t1, s1), (t2, s2) = ((p["tokens"], p["seconds"]) for p in cost["points"])
    assert t1 < t2 and s1 > 0 and s2 > 0
    assert cost["per_token_s"] == pytest.approx(max(0.0, (s2 - s1) / (t2 - t1)), rel=1e-9, abs=1e-15)
    steady = (last["tokens"] - first["tokens"]) / (last["train_time_s"] - first["train_time_s"])
    step_s = cost["tokens_per_step"] / steady
    left = max(0.0, step_s - cost["per_token_s"] * cost["tokens_per_step"])
    assert cost["fixed_s"] == pytest.approx(left, abs=1e-3 * step_s), (cost, step_s)
    assert cost["repeats"] == 4  # 160 steps: the full 4 timed repeats (one per 20 steps, at most 4)
    # the machine's load (tunelab/host/cpuload.py): each row has the process's CPU seconds so far (never falling) and the
    # share of the cores others held since the previous row; summary.json the window over the training steps, the
    # step cost the window over its timed steps
    cpu = [r["cpu_s"] for r in rows]
    assert cpu[0] > 0 and all(b >= a for a, b in zip(cpu, cpu[1:]))
    assert all(isinstance(r["others_share"], float) for r in rows)  # measured on every row (Linux)
    load = summary["load"]
    assert 0 < load["wall_s"] < summary["duration_s"] and 0 < load["cpu_s"]
    assert load["cores"] == len(os.sched_getaffinity(0)) and load["threads"] == summary["cpu_threads"]
    # its derived figures as the rule gives them from its recorded ones: others held others_cpu_s / wall_s of
    # its cores; its threads wanted min(threads, cores) of them and had what others left (at least 0.1)
    held = load["others_cpu_s"] / load["wall_s"]
    assert load["others_share"] == pytest.approx(min(1.0, held / load["cores"]), abs=1e-3)
    slowdown = slowdown_by_rule(load["threads"], load["cores"], held)
    assert load["slowdown"] == pytest.approx(slowdown, rel=2e-3, abs=2e-3)
    check_contended(load["contended"], slowdown)
    assert 0 < cost["load"]["wall_s"] < summary["finish_s"]
    # data wait: measured per logged row, never negative or longer than the row's training time, and the
    # summary's total (the run's counter, not the rows) equals their sum; CPU training has no dataloader workers
    prev = 0.0
    for r in train_rows:
        assert 0 <= r["data_wait_s"] <= r["train_time_s"] - prev, r
        prev = r["train_time_s"]
    assert summary["data_wait_s"] == pytest.approx(sum(r["data_wait_s"] for r in train_rows), abs=2e-3)
    assert summary["data_wait_s"] > 0  # fetching 160 batches takes some time
    assert summary["data_wait_fraction"] == pytest.approx(summary["data_wait_s"] / summary["train_time_s"], abs=1e-3)
    assert (summary["dataloader_workers"], summary["dataloader_workers_source"]) == (0, "cpu training")
    # shuffled (the default) draws a different seeded permutation each epoch, all recorded
    orders = read_jsonl(run_dir / "data_order.jsonl")
    assert [o["epoch"] for o in orders] == list(range(epochs))
    assert orders[0]["order"] == "shuffled" and orders[0]["seed"] == 42
    assert all(sorted(o["indices"]) == list(range(320)) for o in orders)
    assert len({tuple(o["indices"]) for o in orders}) == epochs
    import torch  # today's shuffle: accelerate's seeded sampler, randperm seeded with seed + epoch

    assert [o["indices"] for o in orders] == [torch.randperm(320, generator=torch.Generator().manual_seed(42 + e))
                                              .tolist() for e in range(epochs)]


def test_packing_bfd_packs_and_learns(write_spec):
    spec = write_spec(factors={"lora_rank": [8]}, controls=False,
                      training={"epochs": 2, "packing": True, "max_seq_len": 128, "batch_size": 2})
    cfg = scaffold(spec).runs[0]
    summary = train(cfg).to_json()
    p = summary["packing"]
    assert p["packed"] and p["examples"] == 320
    assert p["density"] > 3  # ~27-token examples, 128-token sequences
    assert 0.5 < p["fill_fraction"] <= 1.0
    assert p["sequences"] < p["examples"] / 3
    assert summary["steps"] == 2 * -(-p["sequences"] // 2)
    rows = read_jsonl(cfg.run_dir / "metrics.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"]
    # the planner's packing simulation predicts exactly what the trainer packed
    from tunelab.estimate.dataset import simulate_bfd_packing
    from tunelab.plan.planner import measure_lengths

    predicted = simulate_bfd_packing(measure_lengths(cfg)[0], 128)
    assert (predicted.sequences, predicted.examples) == (p["sequences"], p["examples"])
    assert predicted.fill_fraction == p["fill_fraction"]


def test_killed_job_resumes_from_last_checkpoint(write_spec, tmp_path):
    spec = write_spec(factors={"lora_rank": [8]}, controls=False, training={"epochs": 2, "logging_steps": 5})
    cfg = scaffold(spec).runs[0]
    run_dir = cfg.run_dir
    # SIGKILLed mid-step 63 of 80 (backward done, optimizer step not: tunelab.faults), by itself, so the kill lands
    # there however fast the machine is: no chance to clean up, as on a node failure, after the epoch-0 checkpoint
    fired = tmp_path / "fired.txt"
    env = dict(os.environ, HF_HUB_OFFLINE="1", **{KILL_ENV: "train.step:63", FIRED_ENV: str(fired)})
    proc = subprocess.run([sys.executable, "-m", "tunelab", "train", str(run_dir / "run.yaml")], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert fired.read_text().split()[0] == "train.step:63"
    assert training_state(run_dir) == "interrupted"
    status = read_json(run_dir / "status.json")
    assert status["step"] == 60  # the last logged step before the kill
    assert status["last_checkpoint"] == "checkpoints/epoch_0"

    from tunelab.execute.local_jobs import LocalExecutor
    from tunelab.execute.sweep import run_sweep

    results = run_sweep(LocalExecutor(), run_dir.parent.parent)
    assert results == {cfg.name: "completed"}
    status = read_json(run_dir / "status.json")
    assert status["resumed_from"].startswith("checkpoint-") and status["restarts"] == 1
    resumed_step = int(status["resumed_from"].split("-")[1])
    assert resumed_step == 40  # the epoch boundary, not step 0
    summary = read_json(run_dir / "summary.json")
    assert summary["steps"] == 80 and summary["checkpoints"] == ["epoch_0", "epoch_1"]
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["loss"] is not None]
    assert steps == list(range(5, 81, 5))  # every logging step exactly once: none twice, none lost
    # the token counters went through the kill: 2 epochs of the dataset, as an uninterrupted run counts
    assert summary["tokens"] == 2 * read_json(run_dir / "packing.json")["tokens"]
    log = (run_dir / "train.log").read_text()
    assert f"resuming from checkpoint-{resumed_step}" in log
    # across the kill: each epoch's order recorded once (the resumed epoch drew the same seeded permutation
    # again), and the data wait carried in the counters still sums the rows
    assert [o["epoch"] for o in read_jsonl(run_dir / "data_order.jsonl")] == [0, 1]
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["loss"] is not None]
    assert summary["data_wait_s"] == pytest.approx(sum(r["data_wait_s"] for r in rows), abs=2e-3)
    # running again is a no-op
    assert run_sweep(LocalExecutor(), run_dir.parent.parent) == {}


def test_failed_run_is_reported_with_its_reason(write_spec, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.ledger import store as ledger

    spec = write_spec(factors={"lora_rank": [4]}, controls=False)
    cfg = scaffold(spec).runs[0]
    # the dataset disappears after scaffolding: the job must fail, say why, and be marked failed
    broken = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"path": str(tmp_path / "gone.json")})})
    from tunelab.rundir.config import save_run_config

    save_run_config(broken)
    res = CliRunner().invoke(app, ["run", str(spec.parent)])  # run's checks see it before any job starts
    assert res.exit_code == 1 and res.stderr.splitlines() == [f"error: {tmp_path / 'gone.json'}: no such file or "
                                                               "directory"], res.output
    assert not (cfg.run_dir / "status.json").exists()
    # past the checks (as when the file goes while the sweep runs), the job fails and says why
    res = CliRunner().invoke(app, ["run", str(spec.parent), "--no-checks"])
    assert res.exit_code == 1 and "did not complete" in res.stderr
    status = read_json(cfg.run_dir / "status.json")
    assert status["state"] == "failed" and "dataset file not found" in status["error"]
    assert f"error: {cfg.name} FAILED: " in res.stderr and "dataset file not found" in res.stderr  # its reason
    assert training_state(cfg.run_dir) == "failed"
    attempts = ledger.query(spec.parent, "SELECT * FROM attempts")
    assert attempts[0]["exit_code"] == 1 and attempts[0]["state"] == "failed"
    assert "dataset file not found" in attempts[0]["reason"]
    rows = CliRunner().invoke(app, ["results", str(spec.parent), "--json"]).stdout
    assert '"state": "failed"' in rows
    assert "gone.json" in (cfg.run_dir / "train.log").read_text()


def test_final_validation_is_logged_once(write_spec):
    """Validation every 15 steps of 40 (at 15, 30 and at the end), then the job is restarted after its last
    checkpoint (killed before summary.json): every (step, is-validation) row still appears exactly once."""
    spec = write_spec(factors={"lora_rank": [4]}, controls=False,
                      training={"epochs": 1, "validation_every_steps": 15, "logging_steps": 10})
    cfg = scaffold(spec).runs[0]
    first = train(cfg).to_json()
    (cfg.run_dir / "summary.json").unlink()
    summary = train(cfg).to_json()  # resumes from checkpoint-40, the end: nothing left but the final validation
    assert read_json(cfg.run_dir / "status.json")["resumed_from"] == "checkpoint-40"
    rows = read_jsonl(cfg.run_dir / "metrics.jsonl")
    keys = [(r["step"], r["val_loss"] is not None) for r in rows]
    assert sorted(keys) == sorted(set(keys)), keys  # each (step, is-validation) exactly once
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [15, 30, 40]
    assert [r["step"] for r in rows if r["loss"] is not None] == [10, 20, 30, 40]
    assert summary["final_val_loss"] == first["final_val_loss"] == rows[-1]["val_loss"]
    # the restarted job trained no step, and still times half and twice the micro-batch for the planner
    b = cfg.training.batch_size
    assert [[p["batch"] for p in s["step_cost"]["points"]] for s in (first, summary)] == [[b // 2, 2 * b]] * 2


def test_a_search_trial_skips_the_step_cost_calibration_a_run_takes(write_spec, capfd):
    """The step-cost calibration after training feeds the history, which never records a search's trial: a 20-step
    run (enough for one timed repeat: step_cost_repeats) trained as a trial (run.yaml's `trial`) measures none and says
    why. The same job as a run measures one: test_train_writes_metrics_checkpoints_and_summary."""
    spec = write_spec(factors={"lora_rank": [4]}, controls=False, training={"epochs": 1, "max_steps": 20})
    run = scaffold(spec).runs[0]
    trial = run.model_copy(update={"name": f"{run.name}-trial-0", "trial": 0,
                                   "directory": str(run.run_dir.parent / f"{run.name}-trial-0")})
    save_run_config(trial)
    assert load_run_config(trial.run_dir / "run.yaml").trial == 0  # run.yaml carries it to the job
    summary = train(load_run_config(trial.run_dir / "run.yaml")).to_json()
    said = capfd.readouterr()
    assert summary["steps"] == 20 and summary["step_cost"] is None
    assert "step cost not measured: a search's trial (no history records it)" in said.out + said.err
