"""An OOM retry resumes across the micro-batch change and equals the uninterrupted run: a real tiny
training, a dataset whose size the micro-batch does not divide, a kill after the first epoch, then an
(injected) OOM that halves the micro-batch and doubles accumulation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from tunelab.faults import FAULT_OOM_ENV, FIRED_ENV, KILL_ENV
from tunelab.fsutil import read_json, read_jsonl
from tunelab.rundir.config import load_run_config
from tunelab.scaffold.write import scaffold
from tunelab.train.job import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory):
    from tunelab.data.capitalization import make_capitalization_dataset

    return make_capitalization_dataset(5, 102, tmp_path_factory.mktemp("odd"), 0.8, seed=1)  # 82 train rows


def _experiment(root, model, data):
    spec = {"name": "odd", "models": [{"name": "tiny", "path": str(model)}],
            "datasets": [{"name": "caps", "path": str(data)}], "prompt": "Capitalize: {input}",
            "factors": {"lora_rank": [4]}, "controls": False,
            "training": {"epochs": 2, "learning_rate": 0.002, "batch_size": 8, "max_seq_len": 64,
                         "warmup_ratio": 0.1, "logging_steps": 1, "dtype": "float32",
                         "modules_to_save": ["embed_tokens", "lm_head"]}}
    root.mkdir()
    (root / "experiment.yaml").write_text(yaml.safe_dump(spec))
    return scaffold(root / "experiment.yaml").runs[0]


def _kill_during_second_epoch(cfg, fired) -> None:
    # SIGKILLed by itself in step 14 (tunelab.faults: backward done, optimizer step not), 3 steps past epoch 0's save
    # at 11, wherever the machine's speed would have put an outside kill
    env = dict(os.environ, HF_HUB_OFFLINE="1", **{KILL_ENV: "train.step:14", FIRED_ENV: str(fired)})
    proc = subprocess.run([sys.executable, "-m", "tunelab", "train", str(cfg.run_dir / "run.yaml")], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=False)
    assert proc.returncode == -signal.SIGKILL and fired.read_text().split()[0] == "train.step:14"
    assert read_json(cfg.run_dir / "status.json")["step"] == 13  # logged every step: the last before the kill


def test_oom_retry_resumes_across_the_micro_batch_change_exactly(tmp_path, tiny_model, odd_dataset, monkeypatch):
    ref_cfg = _experiment(tmp_path / "ref", tiny_model, odd_dataset)
    ref = train(ref_cfg).to_json()
    assert ref["train_examples"] == 82 and 82 % 8 and ref["steps"] == 2 * 11  # ceil(82 / 8) per epoch

    cfg = _experiment(tmp_path / "retried", tiny_model, odd_dataset)
    _kill_during_second_epoch(cfg, tmp_path / "fired.txt")
    monkeypatch.setenv(FAULT_OOM_ENV, "4")  # micro-batch 8 now fails as a GPU OOM would
    from tunelab.execute.local_jobs import LocalExecutor
    from tunelab.execute.sweep import run_sweep

    assert run_sweep(LocalExecutor(), cfg.run_dir.parent.parent) == {cfg.name: "completed"}
    new = load_run_config(cfg.run_dir)
    assert (new.attempt, new.training.batch_size, new.training.gradient_accumulation_steps) == (2, 4, 2)
    status = read_json(cfg.run_dir / "status.json")
    assert status["resumed_from"] == "checkpoint-11"  # the epoch boundary, under the new micro-batch
    got = read_json(cfg.run_dir / "summary.json")
    assert (got["steps"], got["checkpoints"], got["tokens"]) == (ref["steps"], ref["checkpoints"], ref["tokens"])
    rows = {r["step"]: r for r in read_jsonl(cfg.run_dir / "metrics.jsonl") if r.get("loss") is not None}
    ref_rows = {r["step"]: r for r in read_jsonl(ref_cfg.run_dir / "metrics.jsonl") if r.get("loss") is not None}
    assert sorted(rows) == sorted(ref_rows) == list(range(1, 23))  # every step once, same total
    for step, r in ref_rows.items():
        assert rows[step]["lr"] == pytest.approx(r["lr"], rel=1e-9, abs=1e-12), step  # same warm-up and decay
        assert rows[step]["loss"] == pytest.approx(r["loss"], rel=1e-4), step  # same examples in each step
        assert rows[step]["tokens"] == r["tokens"], step
