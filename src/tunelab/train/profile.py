"""A few optimizer steps through the Trainer's own loop under torch.profiler, each part labelled (`--profile=DIR` of
probe_steps, after the timed steps).

Why the Trainer's loop: a run's step also clips, steps the scheduler, runs the callbacks and logs, all per-step cost the
probe's bare steps miss. Parts are labelled by wrapping this trainer's own methods, so nothing of a run changes; the
loop logs every step here, so a log's cost is an upper bound. The profiler starts and stops at the start of a step, so
each profiled step is whole."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.train import loop_hooks
from tunelab.train.profile_report import LABEL_PREFIX, Part, StepProfile, summarize, write_profile

PROFILE_STEPS = 3  # profiled steps when the probe is given no --steps
WARMUP_STEPS = 1  # loop steps before the profiler starts (the optimizer and its kernels are warm already)
RUN_SUBDIR = "run"  # DIR/run: tunelab's callback writes metrics.jsonl and status.json there


def labelled(fn: Callable[..., Any], part: Part) -> Callable[..., Any]:
    """`fn` run inside record_function('part:<part>')."""
    import torch

    label = LABEL_PREFIX + part.value

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)

    return run


class Patches:
    """Attributes replaced for the profile and put back after it."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, bool, Any]] = []

    def label(self, obj: Any, name: str, part: Part) -> None:
        self.replace(obj, name, labelled(getattr(obj, name), part))

    def replace(self, obj: Any, name: str, value: Any) -> None:
        own = name in getattr(obj, "__dict__", {})
        self._undo.append((obj, name, own, getattr(obj, name)))
        setattr(obj, name, value)

    def undo(self) -> None:
        for obj, name, own, old in reversed(self._undo):
            if own:
                setattr(obj, name, old)
            else:  # a method found on the class: the instance's wrapper goes
                delattr(obj, name)
        self._undo.clear()


def _label_callbacks(trainer: Any, patches: Patches) -> None:
    """The handler's events as the Trainer's callbacks; tunelab's callbacks' own events inside them as tunelab's."""
    from transformers import TrainerCallback

    handler = trainer.callback_handler
    patches.label(handler, "call_event", Part.CALLBACKS_OTHER)
    events = [n for n in vars(TrainerCallback) if n.startswith("on_")]
    for cb in handler.callbacks:
        if type(cb).__module__.startswith("tunelab."):
            for event in events:
                patches.label(cb, event, Part.CALLBACKS_TUNELAB)


def _label_parts(trainer: Any, patches: Patches, boundary: Callable[[], None]) -> None:
    """Every part of the loop's step labelled on this trainer; `boundary` called at each step's start."""
    fetch = trainer.get_batch_samples
    labelled_fetch = labelled(fetch, Part.DATA)

    def get_batch_samples(*args: Any, **kwargs: Any) -> Any:
        boundary()
        return labelled_fetch(*args, **kwargs)

    patches.replace(trainer, "get_batch_samples", get_batch_samples)
    if not trainer.args.dataloader_num_workers:  # a worker collates elsewhere (and would have to pickle the label)
        patches.label(trainer, "data_collator", Part.COLLATE)
    patches.label(loop_hooks, "count_batch", Part.COUNTING)
    patches.label(loop_hooks, "record_seen", Part.COUNTING)
    patches.label(trainer, "training_step", Part.STEP_OTHER)
    patches.label(trainer, "compute_loss", Part.FORWARD)
    patches.label(trainer.accelerator, "backward", Part.BACKWARD)
    patches.label(trainer, "_clip_grad_norm", Part.CLIP)
    patches.label(trainer, "_get_grad_norm", Part.CLIP)
    patches.label(trainer.model, "zero_grad", Part.ZERO_GRAD)
    patches.label(trainer, "_maybe_log_save_evaluate", Part.LOGGING)
    _label_callbacks(trainer, patches)


class _ProfilerWindow:
    """Profiles steps `first` to `first + steps`, starting and stopping at step starts: whole steps, only those."""

    def __init__(self, prof: Any, first: int, steps: int) -> None:
        self.prof, self.first, self.last = prof, first, first + steps
        self.seen = 0
        self.running = False

    def __call__(self) -> None:
        i, self.seen = self.seen, self.seen + 1
        if i == self.first:
            self.prof.start()
            self.running = True
        elif self.first < i < self.last:
            self.prof.step()
        elif i == self.last:
            self.stop()

    def stop(self) -> None:
        """Stop the profiler if it runs (also when the loop ended before the window's end)."""
        import torch

        if self.running:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.prof.stop()
            self.running = False


def _scheduler_label(patches: Patches) -> Any:
    """A callback that labels the scheduler the loop steps (built, or taken again, when training begins)."""
    from transformers import TrainerCallback

    class SchedulerLabel(TrainerCallback):
        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            if lr_scheduler is not None:
                patches.label(lr_scheduler, "step", Part.SCHEDULER)

    return SchedulerLabel()


@contextmanager
def _run_callbacks(trainer: Any, run_dir: Path) -> Iterator[None]:
    """tunelab's callbacks as a run attaches them (train/runner.py), writing into `run_dir`; removed after."""
    from tunelab.rundir.status import StatusWriter
    from tunelab.train.interrupts import SignalWatch, make_checkpoint_policy
    from tunelab.train.metrics import MetricsWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    writer = MetricsWriter(run_dir, trainer.counters)
    callbacks = [loop_hooks.make_callback(run_dir, writer, StatusWriter(run_dir), {}, trainer.local),
                 make_checkpoint_policy(None, None, SignalWatch())]
    for cb in callbacks:
        trainer.add_callback(cb)
    try:
        yield
    finally:
        for cb in callbacks:
            trainer.remove_callback(cb)


def profile_loop(trainer: Any, out_dir: Path, steps: int = PROFILE_STEPS) -> StepProfile:
    """Train `steps` more steps under the profiler (log every step, save nothing); write trace and tables to
    `out_dir`."""
    import torch
    from transformers.trainer_utils import SaveStrategy

    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    # a schedule that always records: without one the profiler marks no ProfilerStep#N (the steps' bounds)
    prof = torch.profiler.profile(activities=activities, schedule=lambda _step: torch.profiler.ProfilerAction.RECORD)
    patches = Patches()
    args = trainer.args
    for name, value in (("max_steps", WARMUP_STEPS + steps + 1), ("logging_steps", 1),
                        ("save_strategy", SaveStrategy.NO)):
        patches.replace(args, name, value)
    window = _ProfilerWindow(prof, WARMUP_STEPS, steps)
    with _run_callbacks(trainer, out_dir / RUN_SUBDIR):
        _label_parts(trainer, patches, window)
        scheduler_label = _scheduler_label(patches)
        trainer.add_callback(scheduler_label)
        try:
            trainer.train()
        finally:
            window.stop()
            trainer.remove_callback(scheduler_label)
            patches.undo()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    note = ("a log at every step here (a run logs every logging_steps): the log_save_evaluate and callbacks rows "
            "are per log")
    profile = summarize(list(prof.events()), device, note)
    write_profile(prof, out_dir, profile)
    return profile
