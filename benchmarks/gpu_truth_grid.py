"""The GPU kit's grid (issue 28, "The kit"): each shape a row, and how long each is expected to take, so the
kit measures the most valuable rows first and never starts one that would overrun its budget.

Values say what a row teaches that no other does (3: a term the simulator has never met on a device or a
known disagreement; 2: a term seen in another row too, at another size). Order: greedily the highest value per
expected second, a model's build counted only for the first row that needs it; then `cover_cases` puts each
case's best row (1-8) before every second row of a case, so a short window measures every case once first.

Rows share a process's imports (gpu_truth_worker.py) unless `alone`: a row that may run out of memory or
poison the CUDA context (the lab's OOM case, the max-batch search, QLoRA), and case 1, which reads the CUDA
context of a fresh process. Unquantized rows draw their random weights in the row's process on its device
(`draw`: nothing written to disk and read back, which took an 8B row over a minute); QLoRA rows load
bitsandbytes' quantization from weights on disk.

The CPU smoke (`--cpu-smoke`) runs the same rows on 2-layer copies of Qwen2.5-0.5B (the smallest catalog
architecture; its 152k-token head still costs about a second per 16 tokens on a loaded CPU core) at 1/128 of
the sequence lengths (16 tokens at least) and a few steps. By default only SMOKE_ROWS: two rows that train in
one process (packed with auto attention, then unpacked) and the lab's out-of-memory row in a process of its own
(TUNELAB_FAULT_OOM_ABOVE_BATCH standing in for the GPU's limit), since importing the training stack alone takes
10-25 s there; `--only` runs any other row the same way. The smoke's rows leave out the probe's generation timing,
which the kit records nothing of (gpu_truth_worker.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

ALL_LINEAR = "all-linear"
SMOKE_ARCH, SMOKE_LAYERS, SMOKE_SCALE = "Qwen2.5-0.5B", 2, 128
SMOKE_OOM_ABOVE_BATCH = 8  # the fault knob's limit in the smoke: the lab's 16-row case runs out of "memory"
SMOKE_ROWS = ("3-packed-b1-auto", "2-unpacked-1024", "4-lab-oom-16x2048")


@dataclass(frozen=True)
class Case:
    name: str
    case: int
    title: str
    arch: str
    lora_rank: int
    batch: int
    seq_len: int
    packed: bool = False
    targets: str = ALL_LINEAR  # comma-separated module names, or all-linear
    attention: str = "auto"
    checkpointing: bool = False
    quantize: str | None = None
    steps: int = 5  # timed steps after the trainer's two warm-up steps
    lengths: str = "long"  # long: every example longer than seq_len (rows full) | mixed | padded
    max_batch: bool = False  # also find the largest micro-batch that runs a real step
    value: float = 2.0
    layers: int | None = None  # None: the model's own depth
    qlora_frozen_dtype: str | None = None  # QLoRA's frozen embeddings, head, norms: compute | float32
    alone: bool = False  # in a process of its own (module docstring)

    @property
    def draw(self) -> bool:
        """Weights drawn in the row's process on its device (a config-only build on disk), not loaded."""
        return self.quantize is None


def qlora_both_ways() -> bool:
    """Whether runs and the simulator take `qlora_frozen_dtype` (models/kbit.py): then the QLoRA row is measured
    both ways, peft's fp32 casts and the frozen parameters kept in bf16."""
    from tunelab.estimate.memory import MemoryInputs
    from tunelab.spec import TrainingConfig

    return "qlora_frozen_dtype" in TrainingConfig.model_fields and "qlora_frozen_dtype" in (
        MemoryInputs.__dataclass_fields__)


def gpu_grid() -> list[Case]:
    one_b, eight_b = "Llama-3.2-1B", "Llama-3.1-8B"
    rows = [
        Case("1-static-8b", 1, "context and static terms: 8B r16 all-linear, 1 × 512, after two steps", eight_b,
             16, 1, 512, steps=2, value=3, alone=True),
        *(Case(f"2-unpacked-{n}", 2, f"per-token term: 1B r8 unpacked 1 × {n}, no checkpointing", one_b, 8, 1, n)
          for n in (1024, 2048, 4096)),
        *(Case(f"3-packed-b{b}-{att}", 3, f"packing: 1B r8 packed {b} × 2048, attention {att}", one_b, 8, b, 2048,
               packed=True, attention=att, value=3 if b == 8 else 2)
          for b in (1, 4, 8) for att in ("sdpa", "auto")),
        Case("4-lab-oom-16x2048", 4, "the lab's OOM case: 1B r64 packed 16 × 2048, no checkpointing", one_b, 64, 16,
             2048, packed=True, steps=2, value=3, alone=True),
        Case("4-lab-find-max-batch", 4, "the lab's case: the largest micro-batch that runs (probe --find-max-batch)",
             one_b, 64, 1, 2048, packed=True, steps=1, max_batch=True, value=3, alone=True),
        Case("5-ckpt-8b-4x4096", 5, "checkpointing: 8B r16 all-linear packed 4 × 4096", eight_b, 16, 4, 4096,
             packed=True, checkpointing=True, steps=3, value=3),
        *(Case(f"6-qlora-8b-4x4096{'-' + f if f else ''}", 6, f"QLoRA: 8B r16 packed 4 × 4096, checkpointing "
               f"(bitsandbytes){', frozen parameters in ' + f if f else ''}", eight_b, 16, 4, 4096, packed=True,
               checkpointing=True, quantize="4bit", steps=3, value=2, qlora_frozen_dtype=f, alone=True)
          for f in (("compute", "float32") if qlora_both_ways() else (None,))),
        Case("7-padded-3b-4x768", 7, "padded: 3B r32 q,v, 4 × 768 unpacked (PEFT's row 17)", "Llama-3.2-3B", 32, 4,
             768, targets="q_proj,v_proj", lengths="padded", value=3),
        Case("8-drift", 8, "drift: 1B r8 packed 4 × 2048, mixed lengths, 200 steps, reserved over time", one_b, 8,
             4, 2048, packed=True, steps=200, lengths="mixed", value=2),
    ]
    return rows


def smoke_grid() -> list[Case]:
    """Every GPU row on the CPU: the smallest architecture at 2 layers, sequences 1/128 as long, few steps."""
    out = []
    for c in gpu_grid():
        seq = max(16, c.seq_len // SMOKE_SCALE)
        out.append(replace(c, arch=SMOKE_ARCH, layers=SMOKE_LAYERS, seq_len=seq,
                           steps=min(c.steps, 4 if c.lengths == "mixed" else 2),
                           title=f"{c.title} [smoke: {SMOKE_ARCH} {SMOKE_LAYERS} layers, {c.batch} × {seq}]"))
    return out


# ---- expected time ------------------------------------------------------------------------------------------
# Assumptions until the kit's own rows replace them (each finished row records its wall time; later estimates
# are scaled by the median ratio of wall to estimate when it is above 1).
PROCESS_START_S = {"cuda": 15.0, "cpu": 15.0}  # a row process's interpreter and imports, paid once per process
ROW_START_S = {"cuda": 10.0, "cpu": 5.0}  # each row: tokenizing, the trainer, a first CUDA step's kernels
BUILD_BYTES_PER_S = 0.25e9  # random weights drawn and written (models random: QLoRA rows)
LOAD_BYTES_PER_S = 1.0e9  # safetensors read and moved to the device
DRAW_BYTES_PER_S = {"cuda": 20e9, "cpu": 0.5e9}  # random weights drawn on the row's device (`draw` rows)
CONFIG_BUILD_S = 5.0  # a config-only build: config.json and the tokenizer padded to the real vocabulary
ASSUMED_MFU = 0.2  # deliberately low: an estimate that is too long only reorders rows
CPU_FLOPS = 2e10  # a loaded CPU core's effective FLOP/s in float32 training
STEP_OVERHEAD_S = 0.05
# --find-max-batch: doubling from 1 then bisection, two real steps at each size tried; in steps of one row,
# about 2 × (1 + 2 + 4 + 8 + 16 + 12 + 14 + 13) for a limit near 13 rows
MAX_BATCH_STEPS = 140
SIMULATE_S = 10.0
MAX_BATCH_SIMULATIONS = 8  # the simulator's own search: 3 fitted points, confirmations, a short bisection


def step_seconds(case: Case, flops_per_token: float, peak_flops: float | None) -> float:
    flops = case.batch * case.seq_len * flops_per_token * (1.5 if case.checkpointing else 1.0)
    rate = peak_flops * ASSUMED_MFU if peak_flops else CPU_FLOPS
    return flops / rate + STEP_OVERHEAD_S


def expected_seconds(case: Case, flops_per_token: float, weight_bytes: float, built: bool, cuda: bool,
                     peak_flops: float | None, fresh: bool = True) -> float:
    """Seconds from starting the row to its result: build (unless built), the process's start (`fresh`: the
    row's process is started for it; else it follows another row in one), load or draw, steps, simulate."""
    where = "cuda" if cuda else "cpu"
    step = step_seconds(case, flops_per_token, peak_flops)
    steps = 2 + case.steps + 1 + (MAX_BATCH_STEPS if case.max_batch else 0)
    simulate = SIMULATE_S * (MAX_BATCH_SIMULATIONS if case.max_batch else 1)
    load = weight_bytes / (DRAW_BYTES_PER_S[where] if case.draw else LOAD_BYTES_PER_S)
    seconds = (PROCESS_START_S[where] if fresh else 0.0) + ROW_START_S[where] + load + steps * step + simulate
    if built:
        return seconds
    return seconds + (CONFIG_BUILD_S if case.draw else weight_bytes / BUILD_BYTES_PER_S)


def value_order(cases: list[Case], cost: dict[str, float], build: dict[str, float], model_of: dict[str, str]
                ) -> list[Case]:
    """Highest value per expected second first; `cost` excludes builds, `build[model]` is paid once (0 when
    the model is already built)."""
    left, out, paid = list(cases), [], set()
    while left:
        def rate(c: Case) -> float:
            extra = 0.0 if model_of[c.name] in paid else build.get(model_of[c.name], 0.0)
            return c.value / (cost[c.name] + extra)

        best = max(left, key=rate)
        out.append(best)
        paid.add(model_of[best.name])
        left.remove(best)
    return out


def cover_cases(order: list[Case], failed: Collection[str] = ()) -> list[Case]:
    """`order` rearranged so that each case's first row comes before any case's second one, a row that failed
    before after those that never ran (it is retried, last); within each part, rows that share a process before
    those that run alone (fewer processes started), each part otherwise in `order`'s order."""
    first: dict[int, Case] = {}
    for c in order:
        if c.name not in failed:
            first.setdefault(c.case, c)
    leading = [c for c in order if first.get(c.case) is c]
    rest = [c for c in order if c not in leading and c.name not in failed]
    retried = [c for c in order if c.name in failed]
    return [c for part in (leading, rest, retried) for c in sorted(part, key=lambda c: c.alone)]


def take_group(queue: list[Case], seconds: Callable[[Case, bool], float], left: float) -> list[Case]:
    """The rows to run next in one process: the queue's first row, and while they fit in `left` seconds the
    shareable rows right after it (`seconds(case, fresh)`: expected time, the process start only for the first).
    A row that runs alone, or one that would not fit, ends the group."""
    group, total = [queue[0]], seconds(queue[0], True)
    if queue[0].alone:
        return group
    for c in queue[1:]:
        total += seconds(c, False)
        if c.alone or total > left:
            break
        group.append(c)
    return group
