"""The training comparison: every tool trains the same job on the same model, repeats interleaved (tool order
rotated each repeat), each run measured from outside and scored by one evaluator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from peerlib.isolation import fresh_home
from peerlib.job import Inputs, Job, training_tokens
from peerlib.measure import Measured, run_measured, thread_env
from peerlib.registry import Found
from peerlib.result import TrainResult, steady_tokens_per_s


def score(inputs: Inputs, adapter: Path, threads: int) -> float | None:
    """The adapter's exact match on the test split, by peerlib/score.py in tunelab's environment."""
    done = subprocess.run([sys.executable, "-m", "peerlib.score", str(inputs.model_dir), str(adapter),
                           str(inputs.jsonl("test")), "--threads", str(threads)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          env=thread_env(threads))
    if done.returncode:
        print(f"  scoring {adapter} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["accuracy"])


def train_once(found: Found, inputs: Inputs, job: Job, out: Path, repeat: int, version: str,
               tokens: int, scored: bool, fresh_caches: bool = True) -> TrainResult:
    row = TrainResult(tool=found.name, version=version, model=inputs.model, repeat=repeat)
    assert found.peer is not None and found.python is not None
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        command = found.peer.train_command(inputs, job, out, found.python)
    except Exception as exc:
        row.error = f"writing its config failed: {exc}"
        return row
    # cold caches and history for every tool (or the caller's, the smoke's: parsing checked, not figures)
    env = thread_env(job.threads, fresh_home(out / "home") if fresh_caches else None, gpu=job.cuda)
    measured: Measured = run_measured(command, env, out, out / "output.log", gpu=job.cuda)
    row.load_before, row.load_after = measured.load_before, measured.load_after
    if measured.returncode:
        row.error = f"exit {measured.returncode}: {measured.tail(3)}"
        return row
    log = found.peer.parse(measured, out)
    (out / "steps.json").write_text(json.dumps(asdict(log)))  # the step times behind the figures, for profiles
    adapter = found.peer.adapter_dir(out)
    if not (adapter / "adapter_config.json").is_file():
        row.error = f"no adapter at {adapter}"
        return row
    row.wall_s, row.peak_pss_mib, row.steps = measured.wall_s, measured.peak_pss_mib, len(log.step_times)
    row.peak_rss_sum_mib = measured.peak_rss_mib
    row.peak_gpu_mib = measured.peak_gpu_mib
    row.first_step_s = log.step_times[0] if log.step_times else None
    row.training_pss_mib = measured.peak_pss_until(log.step_times[-1]) if log.step_times else None
    row.own_tokens_per_s = log.own_tokens_per_s
    row.tokens_per_s = steady_tokens_per_s(log.step_times, tokens)
    row.final_loss = log.losses[-1] if log.losses else None
    if scored:
        row.accuracy = score(inputs, adapter, job.threads)
    return row


def versions(found: list[Found]) -> dict[str, str]:
    out = {}
    for f in found:
        if f.peer is not None and f.python is not None:
            try:
                out[f.name] = f.peer.version(f.python)
            except Exception as exc:  # noqa: BLE001 - a version that cannot be read is said, not fatal
                out[f.name] = f"unknown ({exc!r})"
    return out


def compare(found: list[Found], inputs: Inputs, job: Job, out: Path, repeats: int,
            rows_file: Path, scored: bool = True, fresh_caches: bool = True) -> list[TrainResult]:
    """Every runnable tool × repeats, interleaved; each row appended to rows_file as it ends (nothing lost on a
    crash). Accuracy is scored on the first repeat (the same seed and job each repeat). `fresh_caches`: every run
    in a home of its own (peerlib/isolation.py); False: in the caller's caches (the smoke)."""
    runnable = [f for f in found if f.peer is not None and f.python is not None]
    known = versions(runnable)
    tokens = training_tokens(inputs, job)
    rows: list[TrainResult] = []
    for repeat in range(repeats):
        order = runnable[repeat % len(runnable):] + runnable[:repeat % len(runnable)] if runnable else []
        for f in order:
            print(f"[peers] {inputs.model} repeat {repeat + 1}/{repeats}: {f.name}", flush=True)
            row = train_once(f, inputs, job, out / inputs.model / f.name / str(repeat), repeat,
                             known.get(f.name, "?"), tokens, scored=scored and repeat == 0,
                             fresh_caches=fresh_caches)
            rows.append(row)
            with rows_file.open("a") as sink:
                sink.write(json.dumps(asdict(row)) + "\n")
            print(f"  {describe(row)}", flush=True)
    return rows


def describe(row: TrainResult) -> str:
    if row.error:
        return f"{row.tool}: failed: {row.error}"
    return (f"{row.tool}: wall {row.wall_s:.1f} s, first step {row.first_step_s or 0:.1f} s, "
            f"{row.tokens_per_s or 0:.0f} tok/s (own {row.own_tokens_per_s or 0:.0f}), "
            f"peak PSS {row.peak_pss_mib:.0f} MiB (training {row.training_pss_mib or 0:.0f}; summed RSS "
            f"{row.peak_rss_sum_mib or 0:.0f}), "
            f"{'' if row.peak_gpu_mib is None else f'GPU used {row.peak_gpu_mib:.0f} MiB, '}loss {row.final_loss}, steps {row.steps}, "
            f"accuracy {row.accuracy}, load {row.load_before} -> {row.load_after}")
