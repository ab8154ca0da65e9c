"""Evaluate a group of targets (grouping.py) in one pass: the base loaded once, every checkpoint's adapter beside it
(shared.py), every target × task as its own inspect Task, samples generated in batches that mix adapters.

Waves of whole targets run together (waves.py), so a pass killed half way keeps the waves it finished and a failing task
fails alone, named. Memory decides how many adapters sit beside the base at once (their bytes against half of what is
free, at most MAX_ADAPTERS); where PEFT refuses to mix a chunk, its targets go one at a time with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.errors import TunelabError
from tunelab.evaluate import EVALUATION_STACK
from tunelab.evaluate.grouping import Alone, Group, chunks
from tunelab.evaluate.runner import PreparedTask, clear_outputs, prepare_task
from tunelab.evaluate.shared import SharedWeights, adapter_bytes, free_bytes
from tunelab.evaluate.waves import run_wave, wave_items
from tunelab.evaluate.work import ItemKey, Outcome, Report, TargetWork, WorkItem
from tunelab.jobimports import Stack, import_job_stack

WAVE_BATCHES = 64  # a wave of a pass: whole targets, up to this many full batches of samples
# Adapters beside the base at once, whatever the memory: PEFT walks every module of the model (its adapters'
# included) to attach one more, so attaching n costs O(n²)
MAX_ADAPTERS = 8


@dataclass(frozen=True)
class PassOptions:
    batch_size: int  # rows of a batch at most
    room: int | None = None  # bytes for adapters beside the base (None: half of what is free once it is loaded)
    fill: bool | None = None  # fill every short batch with other adapters' rows (None: the device's way, shared.py)
    inspect_loop: bool = False  # every task through inspect-ai's sample loop, the built-ins too (batched.py)


@dataclass
class PassResult:
    outcomes: dict[ItemKey, Outcome] = field(default_factory=dict)
    fallback: list[Alone] = field(default_factory=list)  # targets whose adapters PEFT would not mix
    batches: int = 0  # generate() batches run, and how many of them mixed adapters
    mixed: int = 0
    chunks: int = 0  # sets of adapters attached in turn (memory)


def evaluate_group(group: Group, options: PassOptions, report: Report) -> PassResult:
    """Every task of every target of the group. Every task is built and checked before the base loads."""
    prepared = {item.key: prepare_task(item.cfg, item.spec) for work in group.members for item in work.items}
    shared = SharedWeights(group.base_path, group.tokenizer_dir, group.dtype, group.device, group.resize)
    one = _Pass(shared, prepared, options, report)
    try:
        if any(work.target.adapter_path is None for work in group.members):
            shared.serve_base()
        parts = _chunks(group.members, shared, options.room)
        one.result.chunks = len(parts)
        for chunk in parts:
            one.chunk(chunk)
    finally:
        shared.release()
    return one.result


def _chunks(members: tuple[TargetWork, ...], shared: SharedWeights, room: int | None) -> list[list[TargetWork]]:
    """The members in chunks whose adapters fit beside the base together; the controls in the first."""
    base_only = [w for w in members if w.target.adapter_path is None]
    adapted = [w for w in members if w.target.adapter_path is not None]
    if not adapted:
        return [base_only]
    room = free_bytes(shared.device) // 2 if room is None else room
    parts = chunks([adapter_bytes(w.target.adapter_path) for w in adapted if w.target.adapter_path], room,
                   MAX_ADAPTERS)
    out = [[adapted[i] for i in part] for part in parts]
    out[0] = base_only + out[0]
    return out


class _Pass:
    """One group's pass: its shared weights, its tasks built, and what became of each."""

    def __init__(self, shared: SharedWeights, prepared: dict[ItemKey, PreparedTask], options: PassOptions,
                 report: Report):
        self.shared, self.prepared, self.options, self.report = shared, prepared, options, report
        self.result = PassResult()

    def chunk(self, chunk: list[TargetWork]) -> None:
        """Attach the chunk's adapters (in place of the last chunk's) and evaluate its targets."""
        failed = self.shared.attach([w.target.adapter_path for w in chunk if w.target.adapter_path is not None])
        ready = []
        for work in chunk:
            why = failed.get(work.target.adapter_path) if work.target.adapter_path is not None else None
            if why is None:
                ready.append(work)
            else:  # a checkpoint that does not load fails its own target only (no old scores left)
                self._fail(work, why)
        refused = self.shared.mixing_refused()
        if refused:
            self.result.fallback += [Alone(work, refused) for work in ready]
        elif ready:
            self.run_tasks([item for work in ready for item in work.items])

    def _fail(self, work: TargetWork, why: str) -> None:
        for item in work.items:
            clear_outputs(item.out_dir)
            outcome = TunelabError(f"task '{item.spec.name}' failed on {work.where()}: {why}",
                                   file=work.target.adapter_path)
            self.result.outcomes[item.key] = outcome
            self.report(item, outcome)

    def run_tasks(self, items: list[WorkItem]) -> None:
        """These items on the shared weights, in waves of whole targets (waves.wave_items)."""
        import_job_stack(*EVALUATION_STACK, record_as=Stack.EVALUATION)
        size = self.options.batch_size
        for wave in wave_items(items, self.prepared, WAVE_BATCHES * size):
            batcher = self.shared.start_batching(size, self.options.fill)
            run_wave(wave, self.shared, self.prepared, size, self.report, self.result.outcomes,
                     self.options.inspect_loop)
            self.result.batches += batcher.batches
            self.result.mixed += batcher.mixed
