"""One row of the GPU kit: its model (built once under the cache: for a row that draws its weights
(gpu_truth_grid.Case.draw) a build without weights, config.json and tokenizer, made here; for a QLoRA row
`tunelab models random` in a process forked from the kit's after torch and transformers are imported, which the
kit's simulation imports anyway), its data, its run, and its measurement: tunelab's probe in gpu_truth_worker.py,
a process of its own that measures a group of rows in turn (`measure_group`), so an OOM or a crash ends that
process and not the kit, and the host RSS it records is its own, not the kit's pages a fork would share.

FLOPs per trained token, for MFU (forecast/speed.py `flops_per_token`, the planner's one formula):
    4·N + 3 · 4 · layers · seq · (heads · head_dim) / 2
N is the catalog's parameter count (embedding included, a lookup that costs nothing: for an untied model that
overstates by 2·vocab·hidden per token, about 6 % for Llama-3.1-8B). 2·N is the forward's matmuls, 2·N the
backward's activation gradients through the frozen weights; the frozen weights get no weight gradients and
LoRA's are negligible (rank ≪ hidden), as is its forward. Attention: QKᵀ and AV, 4·seq·width per token per
layer forward, ×3 with the backward, halved by causality; seq is the row's length (every packed row holds one
example cut to max_seq_len; the drift row's mixed lengths make its figure an upper bound). Recomputation under
checkpointing is not counted (model FLOPs, not hardware FLOPs). MFU = tokens/s · FLOPs per token ÷ the GPU's
dense bf16 peak from the catalog; tokens are those the step processes (padding included where rows are
padded).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from forking import run_python, start, wait
from gpu_truth_grid import SMOKE_OOM_ABOVE_BATCH, Case
from gpu_truth_records import Measured
from gpu_truth_worker import read_status

OOM_MARKERS = ("OutOfMemoryError", "out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
PROMPT = "{input}"
EXTRA_CHARS = 64  # an example's answer is this much longer than max_seq_len: every row is cut full


@dataclass(frozen=True)
class Env:
    """Where the kit works and what it runs on."""

    out: Path
    cache: Path
    cuda: bool
    smoke: bool
    visible: str | None = None  # CUDA_VISIBLE_DEVICES as the kit was started (the kit hides the GPU from itself)
    profile_row: str | None = None  # this row's probe also profiles a few steps into OUT/profile (--profile-row)

    def model_dir(self, case: Case) -> Path:
        return self.cache / "models" / f"{case.arch}-{case.layers or 'all'}L{'-drawn' if case.draw else ''}"

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if self.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.visible
        if self.smoke:  # the smoke trains on the CPU even where a GPU is, and the knob stands in for its limit
            env.update(CUDA_VISIBLE_DEVICES="", TUNELAB_FAULT_OOM_ABOVE_BATCH=str(SMOKE_OOM_ABOVE_BATCH))
        return env


def is_built(model: Path) -> bool:
    from tunelab.models.random_init import PROVENANCE_FILE

    return (model / PROVENANCE_FILE).is_file()  # written last, and the directory renamed into place whole


def build_model(case: Case, env: Env, timeout: float) -> str | None:
    """The row's model into the cache (once); None when built, else why not."""
    model = env.model_dir(case)
    if is_built(model):
        return None
    if case.draw:
        from tunelab.errors import TunelabError
        from tunelab.models.random_init import build_random_model

        try:
            build_random_model(case.arch, model, layers=case.layers, seed=0, weights=False)
        except TunelabError as exc:
            return f"build without weights of {case.arch}: {exc}"
        return None
    import torch  # noqa: F401  (the kit's simulation imports them next anyway; the build's fork starts with them)
    import transformers  # noqa: F401

    from tunelab.cli import build  # noqa: F401
    from tunelab.models import random_init  # noqa: F401

    cmd = [sys.executable, "-m", "tunelab", "models", "random", "--arch", case.arch, "--out", str(model),
           "--dtype", "bfloat16", "--seed", "0", *(["--layers", str(case.layers)] if case.layers else [])]
    code, tail = run_process(cmd, env, env.out / "logs" / f"build-{model.name}.log", timeout, fork=True)
    if code is None:  # killed at the budget: its half-written build directory goes too
        for tmp in model.parent.glob(f".{model.name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    return None if code == 0 and is_built(model) else f"models random --arch {case.arch}: {tail}"


def _text(rng: random.Random, n: int) -> str:
    """n bytes of lower-case words: one token each under the random models' byte-level tokenizer."""
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz      ") for _ in range(n))


def answer_lengths(case: Case, rows: int) -> list[int]:
    """long: every answer longer than max_seq_len (each packed or unpacked row is cut full); padded: groups of
    micro-batch size with one full row and shorter ones (every batch padded to max_seq_len); mixed: lengths
    spread from 1/16 of max_seq_len to past it (packed rows change length every step)."""
    full = case.seq_len + EXTRA_CHARS
    if case.lengths == "padded":
        return [full if i % case.batch == 0 else case.seq_len * (case.batch - i % case.batch) // (case.batch + 1)
                for i in range(rows)]
    if case.lengths == "mixed":
        rng = random.Random(1)
        return [rng.randint(case.seq_len // 16, full) for _ in range(rows)]
    return [full] * rows


def write_data(case: Case, env: Env) -> Path:
    """The row's training set: enough rows for the warm-up, the timed steps and a max-batch search."""
    rows = (case.steps + 4) * case.batch + (256 if case.max_batch else 0)
    rows = rows * 3 if case.lengths == "mixed" else rows  # several short examples share a packed row
    rng = random.Random(0)
    data = [{"input": "q", "output": _text(rng, n)} for n in answer_lengths(case, rows)]
    path = env.cache / "work" / "data" / f"{case.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"train": data}))
    return path


def run_config(case: Case, env: Env, data: Path):
    """The scratch run the probe trains (estimate.probe.probe_cfg: two warm-up steps, no validation)."""
    from tunelab.estimate.probe import probe_cfg
    from tunelab.rundir.config import RunConfig

    targets: str | list[str] = case.targets if case.targets == "all-linear" else case.targets.split(",")
    training = {"epochs": 1, "batch_size": case.batch, "max_seq_len": case.seq_len, "packing": case.packed,
                "lora_rank": case.lora_rank, "lora_target_modules": targets, "attention": case.attention,
                "gradient_checkpointing": case.checkpointing, "quantize": case.quantize, "logging_steps": 1,
                **({"qlora_frozen_dtype": case.qlora_frozen_dtype} if case.qlora_frozen_dtype else {})}
    cfg = RunConfig(name=case.name, kind="finetune", experiment="gpu-truth", experiment_dir=str(env.cache / "work"),
                    model={"name": case.arch, "path": str(env.model_dir(case))},
                    dataset={"name": "synthetic", "path": str(data)}, prompt=PROMPT, training=training)
    return probe_cfg(cfg, case.name)


def run_process(cmd: list[str], env: Env, log: Path, timeout: float, fork: bool = False) -> tuple[int | None, str]:
    """Run in a session of its own, output to `log`; (exit code, last line). None: killed at the timeout.
    fork: what `cmd` ([python, ARGV...]) runs, in a process forked from this one after its imports (forking.py)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if fork:
        code = wait(start(run_python, cmd[1:], Path.cwd(), env.child_env(), out=log, err=log,
                          timeout=max(1.0, timeout))).code
    else:
        code = _popen(cmd, env, log, timeout)
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return code, (lines[-1].removeprefix("error: ")[:300] if lines else "no output")


def _popen(cmd: list[str], env: Env, log: Path, timeout: float) -> int | None:
    """`cmd` as a process of its own (a new session, killed whole at the timeout); None: killed."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env.child_env(), start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code


WORKER = Path(__file__).resolve().parent / "gpu_truth_worker.py"


@dataclass(frozen=True)
class GroupResult:
    """What a group's process measured: each row it finished, in order, and its seconds in that process; the row
    the budget stopped (killed), if any. Rows after the last finished one were not reached."""

    measured: list[tuple[Case, Measured, float]]
    killed: Case | None


def measure_group(cases: list[Case], env: Env, flops: dict[str, float], peak_tflops: float | None,
                  timeout: float) -> GroupResult:
    """The probe's measurement of these rows in one process (gpu_truth_worker.py), in order."""
    from tunelab.rundir.config import save_run_config

    runs = [run_config(case, env, write_data(case, env)) for case in cases]
    status_dir = env.cache / "work" / "status" / cases[0].name
    shutil.rmtree(status_dir, ignore_errors=True)
    status_dir.mkdir(parents=True)
    rows = []
    for case, pcfg in zip(cases, runs):
        shutil.rmtree(pcfg.run_dir, ignore_errors=True)
        rows.append({"name": case.name, "run_yaml": str(save_run_config(pcfg, durable=False)), "steps": case.steps,
                     "max_batch": case.max_batch,
                     "profile": str(env.out / "profile") if case.name == env.profile_row else None})
    plan = status_dir / "plan.json"
    # the smoke leaves out the probe's generation timing, which the kit records nothing of (gpu_truth_worker.py)
    plan.write_text(json.dumps({"status_dir": str(status_dir), "rows": rows, "generation": not env.smoke}))
    try:
        code, tail = run_process([sys.executable, str(WORKER), str(plan)], env,
                                 env.out / "logs" / f"{cases[0].name}.log", timeout)
        return _read_group(cases, runs, status_dir, code, tail, flops, peak_tflops)
    finally:
        for pcfg in runs:
            shutil.rmtree(pcfg.run_dir, ignore_errors=True)


def _read_group(cases: list[Case], runs: list, status_dir: Path, code: int | None, tail: str,
                flops: dict[str, float], peak_tflops: float | None) -> GroupResult:
    """Each row's status in order; the first without one was running when the process ended: killed at the
    budget (code None), or the row that crashed it (failed, or oom by its last line)."""
    from tunelab.rundir.layout import PROBE_RESULTS_FILE, PROBE_RUN_PREFIX
    from tunelab.rundir.probe import read_probe_results

    out: list[tuple[Case, Measured, float]] = []
    for case, pcfg in zip(cases, runs):
        status = read_status(status_dir, case.name)
        if status is None:
            if code is None:
                return GroupResult(out, case)
            if code != 0:  # the process died on this row (a crash that no exception reports)
                out.append((case, _failure(tail, 0.0), 0.0))
            return GroupResult(out, None)
        results = pcfg.run_dir / PROBE_RESULTS_FILE
        if status.error is not None or not results.is_file():
            out.append((case, _failure(status.error or "no results written", status.seconds), status.seconds))
            continue
        r = read_probe_results(results)[pcfg.name.removeprefix(PROBE_RUN_PREFIX)]
        out.append((case, measured_of(r, flops[case.name], peak_tflops, status.seconds), status.seconds))
    return GroupResult(out, None)


def _failure(line: str, wall: float) -> Measured:
    return Measured(status="oom" if any(m in line for m in OOM_MARKERS) else "failed", error=line, wall_s=wall)


def measured_of(r, flops_per_token: float, peak_tflops: float | None, wall: float) -> Measured:
    """The kit's record of one probe result (rundir.probe's)."""
    from tunelab.rundir.memory import MemoryKind

    cpu = r.memory_kind is MemoryKind.HOST_MAX_RSS
    mfu = r.tokens_per_s * flops_per_token / (peak_tflops * 1e12) if peak_tflops and not cpu else None
    return Measured(
        status="ok", device=r.device, memory_kind=r.memory_kind,
        allocated_gib=None if cpu else r.peak_memory_gib, reserved_gib=r.peak_reserved_gib,
        nvml_used_gib=r.nvml_used_gib, context_gib=r.cuda_context_gib, context_after_gib=r.cuda_context_after_gib,
        rss_peak_gib=r.peak_memory_gib if cpu else None, tokens_per_s=r.tokens_per_s,
        median_step_s=statistics.median(s.seconds for s in r.steps) if r.steps else None,
        tokens_per_step=statistics.median(s.tokens for s in r.steps) if r.steps else None,
        mfu=round(mfu, 4) if mfu is not None else None, max_micro_batch=r.max_micro_batch,
        memory_trace_gib=[s.memory_gib for s in r.steps], wall_s=wall)
