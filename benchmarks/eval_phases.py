"""Where a one-pass evaluation's wall time goes, phase by phase, beside a pure generation loop over the same
tokens through the same models (benchmarks/eval_sweep.py prints the table; issue 45).

The phases are read off the evaluating thread's stack, not from timers around functions: inspect-ai runs every
sample as a coroutine, so a timer around an async function would count the other samples' work while it waits.
A sampler thread reads the main thread's stack every SAMPLE_S seconds and names the phase of the time since its
last look by PHASES: the first rule (in that order) one of whose functions is on the stack. `generate_rows` (the
pass's batches) is also timed exactly (it runs inline, on the event loop) and its batches are recorded, then run
again after the evaluation by `pure_generation`: the same rows, the same adapters on the same base, batched as the
pass batched them, through plain `model.generate` (left-padded, greedy, each batch to its longest row's
max_tokens, the targets' end tokens) — what generating these tokens costs on this machine, nothing around it.
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

SAMPLE_S = 0.002
SWITCH_S = 0.0005  # the GIL's switch interval while sampling (Python's default: 0.005)
# (phase, path fragment of the frame's file, its function names: empty for any function of that file). The first
# rule with a frame on the stack names the phase; the stack is the main thread's, innermost frame first.
PHASES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("process start and imports", "<frozen importlib._bootstrap", ()),  # a module imported on first use, mid-way
    ("ledger ingest", "tunelab/ledger/", ()),
    ("logs read back, scores.json", "tunelab/evaluate/waves.py", ("ended",)),
    ("logs read back, scores.json", "tunelab/evaluate/runner.py", ("finish_task",)),
    ("generation", "tunelab/evaluate/shared.py", ("generate_rows",)),
    ("generation", "tunelab/evaluate/hf.py", ("generate_batch", "continuation_logprobs")),
    ("weights and adapters", "tunelab/evaluate/shared.py", ("__init__", "attach", "release", "mixing_refused")),
    ("weights and adapters", "tunelab/evaluate/hf.py", ("load_model", "local_lm", "release_weights")),
    ("dataset and task building", "tunelab/evaluate/runner.py", ("prepare_task",)),
    ("prompt formatting", "tunelab/evaluate/provider.py", ("prompt_ids",)),
    ("scoring", "inspect_ai/scorer/", ()),
    ("scoring", "tunelab/evaluate/batched.py", ("_score",)),
    ("log writing", "tunelab/evaluate/evallog.py", ()),
    ("scoring", "tunelab/evaluate/tasks.py", ("score",)),
    ("log writing", "inspect_ai/log/_recorders/buffer/", ()),
    ("log writing", "inspect_ai/log/", ()),
    ("log writing", "inspect_ai/_eval/task/log.py", ()),
    ("event loop idle (batch gathering, waits)", "selectors.py", ("select",)),
    ("inspect-ai sample loop", "inspect_ai/_eval/task/run.py", ("task_run_sample", "_task_run_sample_attempt")),
    ("tunelab's batched loop (outputs, states)", "tunelab/evaluate/batched.py", ()),
    ("inspect-ai task and log setup", "inspect_ai/", ()),
    ("inspect-ai task and log setup", "tunelab/evaluate/waves.py", ("bind",)),
)
# eval_sweep.py --log-zstd-threads N: the child compresses each .eval member on N threads (inspect-ai's own 12: the
# figure before evaluate/inspect_internals.py), for a side-by-side run
LOG_ZSTD_THREADS_ENV = "EVAL_PHASES_LOG_ZSTD_THREADS"
ORDER = ("process start and imports", "inspect-ai task and log setup", "dataset and task building",
         "prompt formatting", "weights and adapters", "generation", "event loop idle (batch gathering, waits)",
         "inspect-ai sample loop", "tunelab's batched loop (outputs, states)", "scoring", "log writing", "logs read back, scores.json", "ledger ingest",
         "other")


class Sampler(threading.Thread):
    """Reads `target`'s stack every SAMPLE_S s; `seconds[phase]` is the wall time seen in each phase, `cpu[phase]`
    the CPU time the thread used meanwhile (its own clock: what other work on a shared machine moves least)."""

    def __init__(self, target: int):
        super().__init__(daemon=True)
        self.target, self.seconds, self.cpu = target, defaultdict(float), defaultdict(float)
        self._clock = time.pthread_getcpuclockid(target)
        self.t0, self.cpu0 = time.perf_counter(), time.clock_gettime(self._clock)  # the first look's start
        self._stop_at = threading.Event()
        self._rule_of: dict[Any, int] = {}  # code object -> index of its first rule (len(PHASES): none)

    def start(self) -> None:
        # The sampler runs when the evaluating thread lets go of the GIL: at its next forced switch, or at a call that
        # releases it (os.urandom, a write). A short switch interval makes the first come first, so that the
        # samples do not pile up on the calls that release the GIL.
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_S)
        super().start()

    def run(self) -> None:
        last, last_cpu = self.t0, self.cpu0
        stopping = False
        while not stopping:  # a last look once stopped: the looks cover all the time from t0 to stop()
            stopping = self._stop_at.wait(SAMPLE_S)
            frame = sys._current_frames().get(self.target)
            now, now_cpu = time.perf_counter(), time.clock_gettime(self._clock)
            phase = self.phase(frame)
            self.seconds[phase] += now - last
            self.cpu[phase] += now_cpu - last_cpu
            last, last_cpu = now, now_cpu

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        self._stop_at.set()
        self.join()
        sys.setswitchinterval(self._interval)
        return dict(self.seconds), dict(self.cpu)

    def phase(self, frame: Any) -> str:
        best = len(PHASES)
        while frame is not None:
            best = min(best, self._rule(frame.f_code))
            frame = frame.f_back
        return PHASES[best][0] if best < len(PHASES) else "other"

    def _rule(self, code: Any) -> int:
        if code not in self._rule_of:
            path = code.co_filename.replace(os.sep, "/")
            self._rule_of[code] = next((i for i, (_, where, names) in enumerate(PHASES)
                                        if where in path and (not names or code.co_name in names)), len(PHASES))
        return self._rule_of[code]


@dataclass
class Batches:
    """The pass's generate() batches as it ran them: per base model, (adapter name → path) and each batch's rows."""

    adapters: dict[str, dict[str, str | None]] = field(default_factory=dict)  # base path -> name -> adapter path
    runs: list[tuple[str, list[tuple[list[int], str, int]], list[int]]] = field(default_factory=list)
    seconds: float = 0.0  # inside generate_rows, timed exactly (wall, and the thread's CPU)
    cpu_s: float = 0.0

    def record(self) -> None:
        """Wrap SharedWeights.generate_rows: time it and keep its rows (prompt, adapter, max_tokens)."""
        from tunelab.evaluate.shared import SharedWeights

        original = SharedWeights.generate_rows
        batches = self

        def generate_rows(shared: Any, rows: Any, stop_ids: list[int]) -> Any:
            base = str(shared.base_path)
            names = batches.adapters.setdefault(base, {})
            names.update({name: key for key, name in shared.served.items()})
            batches.runs.append((base, [(list(r.prompt_ids), r.adapter, r.settings.max_new_tokens) for r in rows],
                                 list(stop_ids)))
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(shared, rows, stop_ids)
            finally:
                batches.seconds += time.perf_counter() - start
                batches.cpu_s += time.thread_time() - cpu

        SharedWeights.generate_rows = generate_rows  # type: ignore[method-assign]


def pure_generation(batches: Batches) -> dict[str, Any]:
    """The recorded batches again through plain HF generate, the same models (weights loaded first, untimed):
    generate's seconds, the batches and the tokens generated."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.evaluate.mixgen import BASE

    seconds, cpu, tokens = 0.0, 0.0, 0
    for base, names in batches.adapters.items():
        tokenizer = AutoTokenizer.from_pretrained(base)
        model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        for name, path in names.items():
            if path is None:
                continue
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, path, adapter_name=name)
        model.eval()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        for where, rows, stop_ids in batches.runs:
            if where != base:
                continue
            width = max(len(p) for p, _, _ in rows)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p, _, _ in rows])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _, _ in rows])
            adapters = [a for _, a, _ in rows]
            extra: dict[str, Any] = {}
            if isinstance(model, PeftModel):
                if len(set(adapters)) == 1 and adapters[0] != BASE:
                    model.set_adapter(adapters[0])
                else:
                    extra["adapter_names"] = adapters
            start, cpu0 = time.perf_counter(), time.thread_time()
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(m for _, _, m in rows),
                                     do_sample=False, num_beams=1, eos_token_id=stop_ids, pad_token_id=pad, **extra)
            seconds += time.perf_counter() - start
            cpu += time.thread_time() - cpu0
            tokens += sum(_generated(seq, stop_ids, m) for seq, (_, _, m) in zip(out[:, width:].tolist(), rows))
    return {"seconds": seconds, "cpu_s": cpu, "batches": len(batches.runs), "tokens": tokens}


def _generated(seq: list[int], stop_ids: list[int], max_tokens: int) -> int:
    """A row's generated tokens: up to and with its first end token, at most its max_tokens."""
    stop = next((i for i, t in enumerate(seq) if t in stop_ids), None)
    return min(max_tokens, len(seq) if stop is None else stop + 1)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def breakdown(exp: str, imports: tuple[float, float], inspect_loop: bool = False) -> dict[str, Any]:
    """The experiment evaluated in one pass (forced, ingested; the built-ins in tunelab's loop, or with
    `inspect_loop` in inspect-ai's), its wall time by phase, then the pure loop."""
    from rich.console import Console

    from tunelab.evaluate.sweep import evaluate_experiment

    batches = Batches()
    batches.record()
    sampler = Sampler(threading.get_ident())
    cpu0, start = cpu_s(), sampler.t0
    sampler.start()
    evaluate_experiment(exp, force=True, console=Console(file=io.StringIO(), width=200), ingest=True, one_pass=True,
                        inspect_loop=inspect_loop)
    phases, phases_cpu = sampler.stop()
    wall, cpu = time.perf_counter() - start, cpu_s() - cpu0
    for seen, before in ((phases, imports[0]), (phases_cpu, imports[1])):  # with the imports made on first use
        seen["process start and imports"] = seen.get("process start and imports", 0.0) + before
    return {"wall_s": wall + imports[0], "cpu_s": cpu + imports[1], "eval_wall_s": wall, "eval_cpu_s": cpu,
            "phases": phases, "phases_cpu": phases_cpu, "generate_rows_s": batches.seconds,
            "generate_rows_cpu_s": batches.cpu_s, "pure": pure_generation(batches)}


def fresh(exp: str, launched: float, inspect_loop: bool = False) -> None:
    """A fresh process's part (`eval_sweep.py --phases-child`): its start and imports timed from `launched` (the
    parent's clock, time.time()), then the breakdown, printed as one JSON line."""
    os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if threads := os.environ.get(LOG_ZSTD_THREADS_ENV):  # --log-zstd-threads: the before of an A/B
        from tunelab.evaluate import inspect_internals

        inspect_internals.LOG_ZSTD_THREADS = int(threads)
    from tunelab.evaluate import EVALUATION_STACK
    from tunelab.host.startup import import_stack

    import_stack(*EVALUATION_STACK, "tunelab.evaluate.sweep", "tunelab.evaluate.passes", "tunelab.evaluate.onepass",
                 "tunelab.evaluate.tasks")
    print(json.dumps(breakdown(exp, (time.time() - launched, cpu_s()), inspect_loop)))
