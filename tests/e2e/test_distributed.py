"""A run on 2 processes trains through torchrun (DDP over gloo on CPU): every training example is seen
exactly once per epoch across the processes, the counters add both processes' tokens, and a run killed
mid-epoch (the whole job, as on a node failure) resumes to the same steps, counters and batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from waiting import Feed, alive, wait_for

from tunelab.faults import FIRED_ENV, KILL_ENV
from tunelab.fsutil import read_json, read_jsonl
from tunelab.host.cores import usable_cores
from tunelab.host.threads import MARK_ENV, thread_budget
from tunelab.rundir.experiment import training_state
from tunelab.scaffold.write import scaffold
from tunelab.train.loop_hooks import DEBUG_SEEN_ENV

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 20  # 320 training examples / (micro-batch 8 × 2 processes)
KILL_STEP = 33  # mid-epoch 1: each rank SIGKILLs itself after this step's backward (tunelab.faults)


def _dataset_rows(cfg) -> Counter:
    """The training examples as token id sequences (the encoding the trainer is given)."""
    from transformers import AutoTokenizer

    from tunelab.train.trainer import build_datasets

    train, _ = build_datasets(cfg, AutoTokenizer.from_pretrained(cfg.model.path))
    return Counter(tuple(ids) for ids in train["input_ids"])


def _seen(seen_dir: Path) -> dict[int, dict[int, dict[int, list]]]:
    """pid -> rank -> step -> the rows that process trained on at that step."""
    out: dict[int, dict[int, dict[int, list]]] = {}
    for f in sorted(seen_dir.glob("seen.rank*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out.setdefault(r["pid"], {}).setdefault(r["rank"], {})[r["step"]] = r["rows"]
    return out


def _kill_whole_job_mid_step(run_dir: Path, seen_dir: Path, fired: Path) -> None:
    """`tunelab train` with both ranks armed to SIGKILL themselves in step KILL_STEP, its launcher (torchrun's agent,
    which would see the workers die and mark the run failed) frozen before either can get there, then SIGKILLed
    with its process group: every process of the job gone without a word, at a known step however fast it trains."""
    feed = Feed(seen_dir / "seen.rank0.jsonl")
    env = dict(os.environ, HF_HUB_OFFLINE="1", **{KILL_ENV: f"train.step:{KILL_STEP}", FIRED_ENV: str(fired)})
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(run_dir / "run.yaml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # past the epoch-0 checkpoint (saved before rank 0 takes step 21's batch): reading stops here
        assert wait_for(lambda: feed.drain() > STEPS_PER_EPOCH or proc.poll() is not None, 240), "no second epoch"
        assert proc.poll() is None, "the job ended before the second epoch"
        feed.drain()  # the last read before the agent stops: neither rank can get to the kill step until the next
        assert feed.held_before(KILL_STEP), f"a page ({feed.size} bytes) holds the records up to step {KILL_STEP}"
        os.kill(proc.pid, signal.SIGSTOP)  # the agent frozen: it neither reacts to the workers' deaths nor says it

        def both_died() -> bool:
            feed.drain()  # rank 0 goes on as the test reads
            return fired.is_file() and len(fired.read_text().splitlines()) == 2

        assert wait_for(both_died, 300), \
            f"both ranks were to die in step {KILL_STEP}: {fired.read_text() if fired.is_file() else 'none did'}"
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its group (SIGKILL ends a stopped process too)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        feed.close()


def test_two_processes_see_each_example_once_per_epoch_and_resume_after_kill(write_spec, tmp_path, monkeypatch):
    spec = write_spec(factors={"lora_rank": [4]}, controls=False,
                      training={"epochs": 2, "logging_steps": 5, "validation_every_steps": STEPS_PER_EPOCH},
                      resources={"nproc_per_run": 2})
    cfg = scaffold(spec).runs[0]
    run_dir = cfg.run_dir
    assert "distributed: 2 processes per run" in (spec.parent / "plan.md").read_text()
    seen_dir = tmp_path / "seen"
    seen_dir.mkdir()
    monkeypatch.setenv(DEBUG_SEEN_ENV, str(seen_dir))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", MARK_ENV):  # tunelab's thread rule, not a test's setting
        monkeypatch.delenv(name, raising=False)
    fired = tmp_path / "fired.txt"
    _kill_whole_job_mid_step(run_dir, seen_dir, fired)
    # both ranks died in step KILL_STEP (after its backward), nothing wrote a word after them, as on a node failure
    lines = [line.split() for line in fired.read_text().splitlines()]
    assert [point for point, _ in lines] == [f"train.step:{KILL_STEP}"] * 2 and len({p for _, p in lines}) == 2
    rank0 = read_json(run_dir / "status.json")["pid"]
    assert wait_for(lambda: not alive(rank0), 30), "a worker outlived its launcher"
    assert read_json(run_dir / "status.json")["step"] == 30  # the last step logged before the kill
    assert training_state(run_dir) == "interrupted"

    from tunelab.execute.local_jobs import LocalExecutor
    from tunelab.execute.sweep import run_sweep

    assert run_sweep(LocalExecutor(), spec.parent) == {cfg.name: "completed"}
    status = read_json(run_dir / "status.json")
    assert status["resumed_from"] == f"checkpoint-{STEPS_PER_EPOCH}" and status["restarts"] == 1
    summary = read_json(run_dir / "summary.json")
    assert summary["world_size"] == 2 and summary["distributed"] == "ddp"
    assert summary["effective_batch_size"] == 8 * 1 * 2
    assert summary["steps"] == 2 * STEPS_PER_EPOCH and summary["checkpoints"] == ["epoch_0", "epoch_1"]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    # each logged step once: none lost, none twice; validation (a collective) at 20 and at the end, once each
    assert [r["step"] for r in rows if r["loss"] is not None] == list(range(5, 41, 5))
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [20, 40]
    # the counters are both processes' together, across the kill: the dataset twice, as an uninterrupted run
    assert summary["tokens"] == 2 * read_json(run_dir / "packing.json")["tokens"]
    assert [r for r in rows if r["loss"] is not None][-1]["examples"] == 2 * 320
    assert "launching 2 processes (torchrun, gloo)" in (run_dir / "train.log").read_text()
    # each rank ran its share of the job's cores: together, the cores given (one thread each at the least)
    given = usable_cores(physical=True)
    cores = given.count
    assert summary["threads"] == {"torch": thread_budget(cores, 2), "cores_given": cores, "processes": 2,
                                  "source": f"{given.source} / 2 process(es)", "limit": given.limit}
    assert summary["cpu_threads"] * 2 == (cores if cores % 2 == 0 else cores - 1) or cores < 2

    seen = _seen(seen_dir)
    assert len(seen) == 4  # two processes before the kill, two after
    first = {rank: steps for per_rank in seen.values() for rank, steps in per_rank.items() if min(steps) == 1}
    after = {rank: steps for per_rank in seen.values() for rank, steps in per_rank.items() if min(steps) > 1}
    assert sorted(first) == sorted(after) == [0, 1]
    assert not any(alive(pid) for pid in seen)  # no worker of either attempt is left behind
    assert all(min(after[r]) == STEPS_PER_EPOCH + 1 for r in after)  # resumed at the epoch-1 boundary
    final = {r: {**{s: v for s, v in first[r].items() if s <= STEPS_PER_EPOCH}, **after[r]} for r in (0, 1)}
    want = _dataset_rows(cfg)
    assert sum(want.values()) == 320
    for epoch in (0, 1):
        steps = range(epoch * STEPS_PER_EPOCH + 1, (epoch + 1) * STEPS_PER_EPOCH + 1)
        got = Counter(tuple(row) for r in (0, 1) for s in steps for row in final[r][s])
        assert got == want, f"epoch {epoch}: not every example exactly once"
        # the two processes split each step's examples: none trains on the same batch as the other
        assert all(len(final[0][s]) == len(final[1][s]) == 8 for s in steps)
    # the resumed job fed the same batches to the same processes as the killed one did before the kill
    for r in (0, 1):
        for s in range(STEPS_PER_EPOCH + 1, KILL_STEP + 1):
            assert after[r][s] == first[r][s], (r, s)


def _collectives_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    from tunelab.train.distributed import agree, all_reduce

    result = {"sum": all_reduce([rank + 1.0, 10.0 * rank]), "max": all_reduce([5.0 - rank], "max"),
              "agree_one": agree(rank == 1), "agree_none": agree(False)}
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_collectives_over_two_gloo_processes(tmp_path):
    """What the counters and a stop decision rely on: sums and maxima reach every rank, and a flag raised
    on one rank is seen by all."""
    import torch.multiprocessing as mp

    # forked: the workers inherit this process's imports instead of importing torch again
    mp.start_processes(_collectives_worker, args=(f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2,
                       join=True, start_method="fork")
    for rank in (0, 1):
        r = json.loads((tmp_path / f"{rank}.json").read_text())
        assert r == {"sum": [3.0, 10.0], "max": [5.0], "agree_one": True, "agree_none": False}
