"""GPU truth in one command: a fixed grid of run shapes measured through tunelab's own trainer, each one also
simulated, written as one JSON file plus a markdown table.

    python benchmarks/gpu_truth.py --out DIR [--budget-s 540] [--only NAME ...] [--cache DIR] [--cpu-smoke]
                                   [--no-peers] [--peer-python torchtune=PYTHON] [--no-eval] [--profile-row NAME]
    python benchmarks/gpu_truth.py --table FILE.json     # docs/benchmarks.md's "Measured on a GPU" table from a result

Each row (gpu_truth_grid.py) builds its model once under --cache (a build without weights, config.json and
tokenizer, whose weights the row's process draws on its device; QLoRA rows: `tunelab models random`, the real
architecture and vocabulary), writes examples longer than max_seq_len (every packed row full), and is measured
by tunelab's probe (`probe_steps.probe_run`, what `python -m tunelab.train.probe_steps RUN_YAML --steps=N` runs:
the trainer's two warm-up steps, `torch.cuda` peak counters reset, then N timed steps; NVML used and the CUDA
context beside them) in gpu_truth_worker.py, a process that measures a group of rows in turn, sharing its
imports (rows that may harm the next run alone). Then the planner's simulator and FLOPs model predict the same
shape (gpu_truth_predict.py); the row keeps both and the error of each (gpu_truth_records.py; MFU's formula:
gpu_truth_shape.py).

- Resumable: the result is DIR/gpu-<gpu>-<date>.json (the newest one of this GPU in DIR is continued); rows
  measured or out of memory in it are skipped, a failed one is tried again (after the rows never tried);
  each row is saved as soon as it is measured.
- Budget: rows go in order of value per expected second, each case's best row first (gpu_truth_grid.py); a row
  whose expected time does not fit in what is left is not started, and a running one is killed at the budget
  (then not recorded, and expected to take longer next time), so a 10-minute window is never overrun.
- An out-of-memory row is a result (status oom, beside the simulator's verdict), not a crash.
- The kit's own process hides the GPU from itself (the simulator needs none), so it holds no CUDA context
  while the probes measure.
- --cpu-smoke: the same path on the CPU with 2-layer copies and short sequences (gpu_truth_grid.py), for CI.
- Then the peer row (gpu_truth_peers.py; off with --no-peers): tunelab against torchtune on the same LoRA job
  (benchmarks/peers.py --device cuda), in the time kept back for it from the rows when a peer's interpreter is at
  hand (--peer-python torchtune=PYTHON, or scripts/peer-env's).
- Then the evaluation row (gpu_truth_eval.py; not with --cpu-smoke, off with --no-eval): HF against vLLM on the
  same adapters (eval_engines.py), when a vLLM is at hand and its expected time fits in what is left.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_truth_grid import (  # noqa: E402
    SMOKE_ROWS,
    Case,
    cover_cases,
    expected_seconds,
    gpu_grid,
    smoke_grid,
    take_group,
    value_order,
)
from gpu_truth_predict import architecture, errors, flops_per_token, resolved_attention, simulate, weight_bytes  # noqa: E402
from gpu_truth_records import KitFile, Measured, ShapeResult, Simulated, load_kit, readme_table, save_kit, shapes_table  # noqa: E402
from gpu_truth_shape import Env, build_model, is_built, measure_group  # noqa: E402
from peerlib import registry  # noqa: E402

MARGIN_S = 10.0  # kept back from the budget: killing a row's processes and the final writes
MFU_FORMULA = "FLOPs/token = 4N + 3·4·layers·seq·width/2 (forecast/speed.py); gpu_truth_shape.py says why"


@dataclass(frozen=True)
class Device:
    cuda: bool
    name: str
    gpu: Any | None  # catalog.GPU

    @property
    def slug(self) -> str:
        if not self.cuda:
            return "cpu"
        return (self.gpu.name if self.gpu else re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-")).lower()

    @property
    def dtype(self) -> str:
        from tunelab.host.device import auto_dtype_name

        if not self.cuda:
            return auto_dtype_name(None)
        return auto_dtype_name(self.gpu.compute_capability if self.gpu else (9, 0))  # unlisted: a recent GPU


def detect_device(smoke: bool, visible: str | None) -> Device:
    """The GPU the probes will see, from nvidia-smi (no CUDA context is created here)."""
    from tunelab.catalog import match_gpu, nvidia_driver_present

    if smoke or not nvidia_driver_present():
        return Device(False, "cpu", None)
    first = (visible or "0").split(",")[0].strip() or "0"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits",
                              "-i", first], capture_output=True, text=True, timeout=60, check=True).stdout
        name, mib = out.strip().splitlines()[0].rsplit(",", 1)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return Device(True, "unknown GPU", None)
    return Device(True, name.strip(), match_gpu(name.strip(), float(mib) / 1024))


def kit_path(out: Path, slug: str) -> Path:
    """The newest result of this GPU in `out` (continued), else a new one dated today."""
    existing = sorted(out.glob(f"gpu-{slug}-*.json"))
    return existing[-1] if existing else out / f"gpu-{slug}-{datetime.date.today().isoformat()}.json"


def new_kit(device: Device, smoke: bool) -> KitFile:
    from tunelab.compat import library_versions

    return KitFile(gpu=device.gpu.name if device.gpu else None, device=device.name,
                   bf16_peak_tflops=device.gpu.bf16_tflops if device.gpu else None, mfu_formula=MFU_FORMULA,
                   cpu_smoke=smoke, started_at=now(), versions=library_versions())


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Planner:
    """Expected seconds per row, scaled by how long this kit's finished rows took against their estimates."""

    def __init__(self, kit: KitFile, env: Env, device: Device) -> None:
        self.kit, self.env, self.device = kit, env, device
        ratios = [s.elapsed_s / s.estimated_s for s in kit.shapes if s.measured.status == "ok" and s.estimated_s]
        self.scale = max(1.0, statistics.median(ratios)) if ratios else 1.0

    def seconds(self, case: Case, fresh: bool = True, built: bool | None = None) -> float:
        """Expected seconds of a row; `fresh`: its process is started for it (else it follows another row)."""
        built = is_built(self.env.model_dir(case)) if built is None else built
        peak = self.device.gpu.bf16_tflops * 1e12 if self.device.gpu else (800e12 if self.device.cuda else None)
        est = expected_seconds(case, flops_per_token(case), weight_bytes(case), built, self.device.cuda, peak, fresh)
        return max(est * self.scale, 1.5 * self.kit.killed_s.get(case.name, 0.0))

    def order(self, cases: list[Case]) -> list[Case]:
        model_of = {c.name: str(self.env.model_dir(c)) for c in cases}
        cost = {c.name: self.seconds(c, built=True) for c in cases}
        build = {model_of[c.name]: self.seconds(c) - cost[c.name] for c in cases}
        failed = {s.name for s in self.kit.shapes if s.measured.status == "failed"}
        return cover_cases(value_order(cases, cost, build, model_of), failed)


@dataclass
class KitRun:
    """One call of the kit: its result file, where it works, and the budget of its training rows."""

    kit: KitFile
    path: Path
    env: Env
    device: Device
    planner: Planner
    deadline: float
    expected: dict[str, float] = field(default_factory=dict)  # the group's rows: seconds expected when started

    def run(self, queue: list[Case]) -> None:
        """Groups of rows (gpu_truth_grid.take_group), each in one process, until the queue or the budget ends;
        rows a group's process did not reach go first into the next group."""
        from tunelab.console import say

        while queue:
            left = self.deadline - time.monotonic()
            if self.planner.seconds(queue[0]) > left:
                say("  {}: not started (expected {:.0f} s, {:.0f} s left)", queue[0].name,
                    self.planner.seconds(queue[0]), left)
                queue.pop(0)
                continue
            group = take_group(queue, self.planner.seconds, left)
            del queue[:len(group)]
            say("  {}", "; ".join(f"{c.name}: {c.title}" for c in group))
            stopped, not_reached = self.run_group(group)
            queue[:0] = not_reached
            if stopped:
                return

    def run_group(self, group: list[Case]) -> tuple[bool, list[Case]]:
        """Build and simulate each row, then measure those that can run in one process. (stopped at the
        budget, rows the process did not reach)"""
        from tunelab.console import say
        from tunelab.spec.training import quantize_problem

        ready, prep = [], {}
        self.expected = {c.name: self.planner.seconds(c, i == 0) for i, c in enumerate(group)}  # before builds
        for case in group:
            t0 = time.monotonic()
            reason = quantize_problem(case.quantize, self.device.cuda) if case.quantize else None
            problem = None if reason else build_model(case, self.env, self.deadline - time.monotonic())
            if problem is not None and time.monotonic() >= self.deadline:
                return True, []  # the build was stopped at the budget: not failed
            simulated = simulate(case, self.env.cache, self.device.dtype if self.device.cuda else "bfloat16",
                                 self.device.gpu)
            prep[case.name] = (simulated, time.monotonic() - t0)
            if reason or problem:
                self.record(case, Measured(status="skipped" if reason else "failed", error=reason or problem),
                            simulated, prep[case.name][1])
            else:
                ready.append(case)
        if not ready:
            return False, []
        t0 = time.monotonic()
        flops = {c.name: flops_per_token(c) for c in ready}
        result = measure_group(ready, self.env, flops, self.device.gpu.bf16_tflops if self.device.gpu else None,
                               self.deadline - time.monotonic())
        for case, measured, seconds in result.measured:
            self.record(case, measured, prep[case.name][0], prep[case.name][1] + seconds)
        if result.killed is not None:
            ran = time.monotonic() - t0 - sum(seconds for _, _, seconds in result.measured)
            self.kit.killed_s[result.killed.name] = round(ran, 1)
            save_kit(self.path, self.kit)
            say("  {}: stopped at the budget after {:.0f} s", result.killed.name, ran)
            return True, []
        return False, ready[len(result.measured):]

    def record(self, case: Case, measured: Measured, simulated: Simulated, elapsed: float) -> None:
        from tunelab.console import say

        row = shape_result(case, self.device, self.expected[case.name], elapsed, measured, simulated)
        self.kit.put(row)
        save_kit(self.path, self.kit)
        self.path.with_suffix(".md").write_text(shapes_table(self.kit))
        say("  {}: {} in {:.0f} s", case.name, row.measured.status, row.elapsed_s)


def shape_result(case: Case, device: Device, estimated: float, elapsed: float, measured: Measured,
                 simulated: Simulated) -> ShapeResult:
    return ShapeResult(
        name=case.name, case=case.case, title=case.title, arch=case.arch, layers=architecture(case).layers,
        lora_rank=case.lora_rank, lora_targets=case.targets, batch=case.batch, seq_len=case.seq_len,
        packed=case.packed, lengths=case.lengths, attention=case.attention,
        attention_resolved=resolved_attention(case, None), checkpointing=case.checkpointing,
        quantize=case.quantize, qlora_frozen_dtype=case.qlora_frozen_dtype, dtype=device.dtype, steps=case.steps,
        flops_per_token=flops_per_token(case), estimated_s=round(estimated, 1), elapsed_s=round(elapsed, 1),
        measured=measured, simulated=simulated, errors=errors(measured, simulated), finished_at=now())


def select(grid: list[Case], only: list[str] | None, smoke: bool) -> list[Case]:
    names = only or (list(SMOKE_ROWS) if smoke else [c.name for c in grid])
    known = {c.name: c for c in grid}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown shape(s) {', '.join(unknown)}; the grid: {', '.join(known)}")
    return [known[n] for n in names]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, help="directory of the result (JSON + markdown) and each row's log")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop cleanly before this many seconds")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these rows only (default: the whole grid)")
    ap.add_argument("--cache", type=Path, help="where random-init models are built once and rows' scratch runs go "
                    "(default: $TUNELAB_CACHE/gpu-truth, else ~/.cache/tunelab/gpu-truth)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same path on the CPU: 2-layer copies, short rows")
    ap.add_argument("--table", type=Path, metavar="JSON", help="print docs/benchmarks.md's table of a result and exit")
    ap.add_argument("--profile-row", metavar="NAME", help="this row's probe also profiles a few steps through the "
                    "Trainer's loop into OUT/profile (probe_steps --profile: a trace and each part of a step)")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation row (HF vs vLLM on the same adapters, "
                    "gpu_truth_eval.py; run after the training rows when a vLLM is at hand and time is left)")
    ap.add_argument("--no-peers", action="store_true", help="skip the peer row (tunelab against torchtune on the same "
                    "LoRA job, gpu_truth_peers.py; its time is kept back from the training rows when a peer is at hand)")
    ap.add_argument("--peer-python", action="append", default=[], metavar="NAME=PYTHON",
                    help="a peer's interpreter, e.g. torchtune=/tmp/peer-torchtune/bin/python (default: "
                    "scripts/peer-env's)")
    args = ap.parse_args(argv)
    if args.table is None and args.out is None:
        ap.error("--out is required (or --table JSON)")
    try:
        args.peer_python = registry.peer_pythons(args.peer_python)
    except ValueError as exc:
        ap.error(str(exc))
    return args


def peers_reserve(args: argparse.Namespace) -> float:
    """The seconds kept back from the training rows for the peer row: its expected time when it will run."""
    import gpu_truth_peers

    if args.no_peers or (not args.cpu_smoke and gpu_truth_peers.peer_python(args.peer_python) is None):
        return 0.0
    return gpu_truth_peers.SMOKE_S if args.cpu_smoke else gpu_truth_peers.PEERS_S


def main(argv: list[str] | None = None) -> int:
    from tunelab.console import say

    args = parse(argv)
    if args.table is not None:
        say("{}", readme_table(load_kit(args.table)))
        return 0
    start = time.monotonic()
    deadline = start + args.budget_s - MARGIN_S
    rows_deadline = deadline - peers_reserve(args)  # the peer row's time, kept back from the training rows
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    device = detect_device(args.cpu_smoke, visible)
    from tunelab.diskcache import cache_dir

    env = Env(out=args.out, cache=args.cache or cache_dir() / "gpu-truth", cuda=device.cuda, smoke=args.cpu_smoke,
              visible=visible, profile_row=args.profile_row)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # this process simulates only: no CUDA context of its own
    cases = select(smoke_grid() if args.cpu_smoke else gpu_grid(), args.only, args.cpu_smoke)
    path = kit_path(args.out, device.slug)
    kit = load_kit(path) if path.is_file() else new_kit(device, args.cpu_smoke)
    done = kit.finished()
    todo = [c for c in cases if c.name not in done]
    say("gpu truth on {} ({}): {} row(s) to measure, {} already in {}", device.name, device.gpu.name if device.gpu
        else "not in the catalog", len(todo), len(cases) - len(todo), path)
    planner = Planner(kit, env, device)
    KitRun(kit, path, env, device, planner, rows_deadline).run(planner.order(todo))
    left_over = [c.name for c in cases if c.name not in kit.finished()]
    say("rows measured: {}/{}{}; {}", len(cases) - len(left_over), len(cases),
        f" (left: {', '.join(left_over)})" if left_over else "", path)
    if not args.no_peers:
        from gpu_truth_peers import peers_row

        one_b = env.cache / "models" / "Llama-3.2-1B-allL"  # a build with weights (the grid's rows draw theirs)
        say("{}", peers_row(args.out, device.slug, visible, deadline - time.monotonic(), args.cpu_smoke,
                            None if args.cpu_smoke or not is_built(one_b) else one_b, args.peer_python))
    if not args.no_eval and not args.cpu_smoke:
        from gpu_truth_eval import eval_row

        say("{}", eval_row(args.out, device.slug, visible, deadline - time.monotonic(), smoke=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
