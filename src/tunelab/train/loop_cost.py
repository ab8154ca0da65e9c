"""What the job's training loop adds to a bare micro-batch, measured on this machine in a process of its own (`python -m
tunelab.train.loop_cost OUT_DIR [THREADS ...]`), run once per machine by the plan (forecast/loopcost.py).

A job's step also collates, counts tokens, clips, steps the scheduler, runs callbacks and writes its files. This trains
a reference run with the job's own trainer and callback, then times bare micro-batches of the same size in the same
process; the difference per step goes to OUT_DIR/loop.json with the load over both and the interpreter's import time
(`imports_s`)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.rundir.metrics import MetricRow

RESULT_FILE = "loop.json"
READY_FILE = "ready"  # --ahead: the stack is imported, the counts may come
AHEAD_FLAG = "--ahead"
REFERENCE = {"batch_size": 8, "max_seq_len": 64, "lora_rank": 4, "logging_steps": 5, "max_steps": 40}
WORDS = 400  # the reference's generated words (80 % train): one epoch is more than max_steps
BARE_STEPS = 20


def loop_step_s(rows: list[MetricRow], warmup_rows: int = 1) -> tuple[float, float] | None:
    """(seconds per optimizer step of the loop, tokens per step) past warm-up; None with fewer than two rows."""
    train = [r for r in rows if r.is_train and r.train_time_s is not None and r.step]
    if len(train) < warmup_rows + 2:
        return None
    first, last = train[warmup_rows], train[-1]
    steps = (last.step or 0) - (first.step or 0)
    seconds = (last.train_time_s or 0.0) - (first.train_time_s or 0.0)
    if steps <= 0 or seconds <= 0:
        return None
    return seconds / steps, ((last.tokens or 0) - (first.tokens or 0)) / steps


def reference_run(root: Path) -> Any:
    """The reference RunConfig under `root`: the tiny model and the words built there (offline, deterministic)."""
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model
    from tunelab.rundir.config import RunConfig

    model = build_tiny_model(root / "model", layers=2, hidden=128, seed=0)
    data = make_capitalization_dataset(5, WORDS, root / "data", 0.8, seed=0)
    return RunConfig(name="loop_cost", kind="finetune", experiment="loop-cost", experiment_dir=str(root),
                     model={"name": "tiny", "path": str(model)}, dataset={"name": "caps", "path": str(data)},
                     prompt="Capitalize: {input}", training={**REFERENCE, "learning_rate": 0.002})


def measure(root: Path) -> dict[str, Any]:
    """Train the reference with the job's loop, then time bare micro-batches of its mean size on its model."""
    from tunelab.host.cpuload import LoadMeter
    from tunelab.rundir.checkpoints import Counters
    from tunelab.rundir.status import StatusWriter
    from tunelab.train.loop_hooks import make_callback
    from tunelab.train.metrics import LocalCounts, MetricsWriter
    from tunelab.train.trainer import build_trainer

    cfg = reference_run(root)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    counters, local = Counters(), LocalCounts()
    writer = MetricsWriter(cfg.run_dir, counters)
    callback = make_callback(cfg.run_dir, writer, StatusWriter(cfg.run_dir), {}, local)
    trainer, _, _ = build_trainer(cfg, counters, [callback], local)
    meter = LoadMeter.start()
    trainer.train()
    loop_load = meter.window() if meter is not None else None
    measured = loop_step_s(writer.rows)
    if measured is None:
        raise RuntimeError("the reference run logged too few rows to time its loop")
    loop_s, tokens = measured
    meter = LoadMeter.start()
    bare = _bare_steps(trainer, int(REFERENCE["batch_size"]), max(1, round(tokens / REFERENCE["batch_size"])))
    bare_load = meter.window() if meter is not None else None
    loads = [w for w in (loop_load, bare_load) if w is not None]
    import torch

    return {"loop_step_s": round(loop_s, 6), "bare_step_s": round(bare, 6), "tokens_per_step": round(tokens, 1),
            "threads": torch.get_num_threads(),
            "steps": trainer.state.global_step, "contended": any(w.contended for w in loads),
            "slowdown": round(max((w.slowdown for w in loads), default=1.0), 3)}


def _bare_steps(trainer: Any, batch: int, seq: int) -> float:
    """Median seconds of a bare micro-batch (forward, backward, AdamW) on the trainer's model: no loop."""
    import torch

    model, opt = trainer.model, trainer.optimizer
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    times = []
    for i in range(BARE_STEPS + 1):
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first: warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Measure into OUT_DIR/loop.json (per thread count: OUT_DIR/threads-N/), one start-up for all. With --ahead: import
    the stack, write OUT_DIR/ready, then read the counts from one line of stdin ("default": torch's own; nothing:
    exit unmeasured) — the plan starts this before it needs it, so these imports run beside its own work."""
    from tunelab.compat import quiet_hf_progress_bars, quiet_known_library_warnings
    from tunelab.host.startup import skip_unused_packages
    from tunelab.jobimports import Stack, import_job_stack
    from tunelab.train import TRAINING_STACK
    from tunelab.train.metrics import process_age_s, started_warm, warm_imports_s

    args = sys.argv[1:] if argv is None else argv
    ahead = args[1:] == [AHEAD_FLAG]
    if not args or not (ahead or all(a.isdigit() and int(a) > 0 for a in args[1:])):
        print(f"usage: python -m tunelab.train.loop_cost OUT_DIR [THREADS ... | {AHEAD_FLAG}]", file=sys.stderr)
        return 2
    skip_unused_packages()
    import_job_stack(*TRAINING_STACK, record_as=Stack.TRAINING)
    # a fresh interpreter with the job's stack imported: a job's start-up before loading (forked from a warm process,
    # train/warm.py: what that process's imports took, its own age being none of them)
    imports_s = warm_imports_s() if started_warm() else process_age_s()
    quiet_hf_progress_bars()
    quiet_known_library_warnings()
    out = Path(args[0])
    counts: list[int | None] | None
    try:
        counts = _asked_counts(out, imports_s) if ahead else [int(a) for a in args[1:]]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if counts is None:  # started ahead, never asked
        return 0
    for threads, root in [(n, out / f"threads-{n}") for n in counts] or [(None, out)]:
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            result = measure(root)
        except Exception as exc:  # noqa: BLE001 — the plan falls back and says why
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 1
        (root / RESULT_FILE).write_text(json.dumps({**result, "imports_s": imports_s, "started_ahead": ahead,
                                                        "started_warm": started_warm()}))
    return 0


def _asked_counts(out: Path, imports_s: float | None) -> list[int | None] | None:
    """Say the stack is imported (OUT_DIR/ready, written whole, with the seconds its imports took), then wait for the plan's line: the thread counts,
    [] for torch's default ("default"), None for none (an empty line or the plan gone: nothing to measure); anything
    else a ValueError."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ready.tmp").write_text(json.dumps({"imports_s": imports_s}))
    (out / "ready.tmp").rename(out / READY_FILE)
    words = sys.stdin.readline().split()
    if not words:
        return None
    if words == ["default"]:
        return []
    if not all(w.isdigit() and int(w) > 0 for w in words):
        raise ValueError(f"thread counts expected on stdin, got {' '.join(words)!r}")
    return [int(w) for w in words]


if __name__ == "__main__":
    sys.exit(main())
