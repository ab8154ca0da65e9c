"""Parse torchtune / SLURM stdout logs into a past run: tolerant of what real logs contain (progress bars, colours,
warnings), strict about what it returns (a truncated or unknown log raises LogParseError with the reason)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

import yaml

from tunelab.rundir.memory import MemoryKind

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CONFIG_START = re.compile(r"Running (\w+) with resolved config:")
LOG_PREFIX = re.compile(r"^(INFO|WARNING|DEBUG|ERROR|CRITICAL)[: ]|^\d{4}-\d\d-\d\d|^wandb:|^\s*\d+\|\d+\|")
TQDM = re.compile(
    r"(?P<epoch>\d+)\|(?P<step>\d+)\|Loss: (?P<loss>[-\d.eE+naNinf]+):\s*(?P<pct>\d+)%\|[^|]*\|\s*"
    r"(?P<n>\d+)/(?P<total>\d+) \[(?P<elapsed>[\d:]+)<(?P<left>[\d:?]+),\s*(?P<rate>[\d.]+)(?P<unit>it/s|s/it)\]"
)
MEMORY = re.compile(r"GPU peak memory (?P<kind>alloc(?:ation)?|reserved|active): (?P<gib>[\d.]+) GiB")
SUMMARY_LINE = re.compile(r"^wandb:\s+(?P<key>[\w/]+)\s+(?P<value>[-\d.eE+]+|nan|inf)\s*$")
CKPT_TIME = re.compile(r"Checkpoint saved in ([\d.]+) seconds")
SLURM_CANCEL = re.compile(r"\*\*\* JOB (\d+) ON \S+ CANCELLED AT \S+ DUE TO (TIME LIMIT|PREEMPTION)")
OOM = re.compile(r"OutOfMemoryError|CUDA out of memory|oom_kill event")
# torchtune's memory counters (log lines and wandb's peak_memory_*) and the memory_kind each is recorded as
PEAK_KINDS = (("allocated", MemoryKind.CUDA_MAX_ALLOCATED), ("reserved", MemoryKind.CUDA_MAX_RESERVED),
              ("active", MemoryKind.CUDA_MAX_ACTIVE))
MODEL_NAMES = [
    (re.compile(r"llama3_2_1b"), "Llama-3.2-1B"), (re.compile(r"llama3_2_3b"), "Llama-3.2-3B"),
    (re.compile(r"llama3_1_8b"), "Llama-3.1-8B"), (re.compile(r"qwen2_5_0_5b"), "Qwen2.5-0.5B"),
    (re.compile(r"qwen2_5_1_5b"), "Qwen2.5-1.5B"), (re.compile(r"qwen2_5_3b"), "Qwen2.5-3B"),
    (re.compile(r"qwen2_5_7b"), "Qwen2.5-7B"), (re.compile(r"mistral_7b"), "Mistral-7B"),
]


class LogParseError(ValueError):
    """This log cannot be imported (truncated, failed or not a torchtune log); the message says why."""


@dataclass
class ParsedRun:
    recipe: str | None
    config: dict[str, Any]
    model: str | None
    epochs_seen: int
    steps: int
    steps_per_s: float | None  # mean after the first bar's warm-up
    losses: list[float] = field(default_factory=list)
    peak_memory_gib: dict[str, float] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    checkpoint_seconds: list[float] = field(default_factory=list)
    packed: bool | None = None
    step_losses: list[tuple[int, int, float]] = field(default_factory=list)  # (epoch, global step, loss)

    def training_peak(self) -> tuple[float | None, MemoryKind | None]:
        """(GiB, memory_kind) of the training peak from the log's counters: allocated first, then reserved (each has a
        simulated counterpart), then active (none, recorded all the same); (None, None) without any."""
        return next(((self.peak_memory_gib[c], kind) for c, kind in PEAK_KINDS if c in self.peak_memory_gib),
                    (None, None))


def _config(lines: list[str]) -> tuple[str | None, dict[str, Any]]:
    for i, line in enumerate(lines):
        m = CONFIG_START.search(line)
        if not m:
            continue
        block = []
        for nxt in lines[i + 1 :]:
            if LOG_PREFIX.search(nxt) or CONFIG_START.search(nxt):
                break
            block.append(nxt)
        while block:
            try:
                data = yaml.safe_load("\n".join(block))
                if isinstance(data, dict):
                    return m.group(1), data
            except yaml.YAMLError:
                pass
            block.pop()  # a stray last line: drop it and try again
        return m.group(1), {}
    return None, {}


def _model_name(config: dict[str, Any]) -> str | None:
    comp = str((config.get("model") or {}).get("_component_", "")) if isinstance(config.get("model"), dict) else ""
    return next((name for pat, name in MODEL_NAMES if pat.search(comp.lower())), None)


def _number(text: str, what: str) -> float:
    """A number the log's patterns matched; a damaged one ('1.2.3', '+') makes the log unreadable, not a crash."""
    try:
        return float(text)
    except ValueError:
        raise LogParseError(f"damaged log: {what} is {text!r}, not a number") from None


def _count(value: object, what: str) -> int:
    """A whole count (epochs, steps) from the config or the summary."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise LogParseError(f"damaged log: {what} is {value!r}, not a whole number") from None


def _training_memory(lines: list[str]) -> dict[str, float]:
    """The largest memory figures logged during training. The block printed after model init is the weights
    alone (often a fraction of the training peak) and is never taken for it."""
    memory: dict[str, float] = {}
    init_lines = 0
    for line in lines:
        if "after model init" in line:
            init_lines = 3
            continue
        m = MEMORY.search(line)
        if not m:
            continue
        gib = _number(m.group("gib"), "GPU peak memory")  # a damaged figure anywhere makes the log unreadable
        if init_lines:
            init_lines -= 1
            continue
        kind = "allocated" if m.group("kind").startswith("alloc") else m.group("kind")
        memory[kind] = max(memory.get(kind, 0.0), gib)
    return memory


def _run_summary(lines: list[str]) -> dict[str, float]:
    """wandb's `Run summary:` block: the last logged value of each metric."""
    summary: dict[str, float] = {}
    in_summary = False
    for line in lines:
        if "Run summary:" in line:
            in_summary = True
            continue
        if in_summary:
            m = SUMMARY_LINE.match(line.strip())
            if m:
                summary[m.group("key")] = _number(m.group("value"), f"run summary {m.group('key')}")
            elif not line.startswith("wandb:"):
                in_summary = False
    return summary


def parse_torchtune_log(text: str) -> ParsedRun:
    lines = [ln for ln in re.split(r"[\r\n]+", ANSI.sub("", text)) if ln.strip()]
    recipe, config = _config(lines)
    if recipe is None:
        raise LogParseError("not a torchtune log (no 'Running ... with resolved config:' line)")
    for line in lines:
        if OOM.search(line):
            raise LogParseError("the run ran out of memory: not a completed run")
        m = SLURM_CANCEL.search(line)
        if m:
            raise LogParseError(f"the job was cancelled due to {m.group(2).lower()}: not a completed run")
    bars: dict[int, list[re.Match]] = {}
    for line in lines:
        for m in TQDM.finditer(line):
            bars.setdefault(int(m.group("epoch")), []).append(m)
    summary = _run_summary(lines)
    if not bars and not summary:
        raise LogParseError("no training progress (no progress bars and no run summary): truncated or failed early")
    epochs = _count(config.get("epochs", 0) or 0, "the config's epochs")
    finished_bars = [e for e, ms in bars.items() if ms and ms[-1].group("n") == ms[-1].group("total")]
    if not summary and epochs and len(finished_bars) < epochs:
        raise LogParseError(f"truncated: {len(finished_bars)} of {epochs} epochs finished and no run summary")
    rates = []
    for e, ms in sorted(bars.items()):
        steady = ms[1:] if e == min(bars) and len(ms) > 2 else ms  # first bar's first update is warm-up
        for m in steady:
            r = _number(m.group("rate"), "a progress bar's rate")
            rates.append(r if m.group("unit") == "it/s" else (1 / r if r else 0.0))
    losses = [_number(ms[-1].group("loss"), "a progress bar's loss") for _, ms in sorted(bars.items())]
    memory = _training_memory(lines)
    for key, kind in (("peak_memory_alloc", "allocated"), ("peak_memory_reserved", "reserved"),
                      ("peak_memory_active", "active")):
        if key in summary:
            memory[kind] = max(memory.get(kind, 0.0), summary[key])
    steps = (_count(summary.get("global_step", 0), "run summary global_step")
             or sum(int(ms[-1].group("n")) for ms in bars.values()))
    dataset: dict[str, Any] = config["dataset"] if isinstance(config.get("dataset"), dict) else {}
    return ParsedRun(
        recipe=recipe,
        config=config,
        model=_model_name(config),
        epochs_seen=len(bars),
        steps=steps,
        steps_per_s=round(mean(rates), 4) if rates else None,
        losses=losses,
        peak_memory_gib=memory,
        summary=summary,
        checkpoint_seconds=[_number(x, "a checkpoint save time") for x in CKPT_TIME.findall("\n".join(lines))],
        packed=bool(dataset.get("packed")) if "packed" in dataset else None,
        step_losses=sorted({(int(m.group("epoch")), int(m.group("step")), _number(m.group("loss"), "a loss"))
                            for ms in bars.values() for m in ms}, key=lambda x: x[1]),
    )
