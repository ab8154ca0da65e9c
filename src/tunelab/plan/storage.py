"""Storage, planned: each run's predicted disk use (estimate/storage.py) summed over the sweep and set beside the
free space and the quota of the experiment's filesystem, so that a sweep that cannot fit is refused by
`validate` (naming the runs and the field that would make it fit) instead of failing at a checkpoint save."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.estimate.dataset import simulate_bfd_packing
from tunelab.estimate.storage import Part, run_disk
from tunelab.fsutil import directory_bytes, human_bytes
from tunelab.host.diskspace import Quota, free_bytes, mount_point, read_quota
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import DiskEstimate, RunEstimate

# split name -> (tokens, first answer position) per example: planner.split_lengths
SplitLengths = Callable[[RunConfig], dict[str, tuple[tuple[int, int], ...]]]
LEVER = "training.keep_checkpoints"
NAMED = 5  # runs a message names before "and N more"


@dataclass(frozen=True)
class RunStorage:
    """One run's predicted disk use, with one trainer state kept instead (the lever), and what it holds now."""

    run: str
    disk: DiskEstimate
    on_disk: int  # bytes its directory holds already (a sweep planned again half-way)
    with_lever: DiskEstimate | None = None  # training.keep_checkpoints: 1

    @property
    def needs(self) -> int:
        return max(0, self.disk.peak_bytes - self.on_disk)

    @property
    def needs_with_lever(self) -> int:
        return max(0, (self.with_lever or self.disk).peak_bytes - self.on_disk)


@dataclass(frozen=True)
class SweepStorage:
    """The sweep's disk use beside what its filesystem has."""

    experiment_dir: str
    mount: str
    runs: list[RunStorage]
    free_bytes: int | None  # shutil.disk_usage of the experiment's filesystem
    quota: Quota | None  # `lfs quota` / `quota`, where one answers
    not_estimated: list[str] = field(default_factory=list)  # runs without a local model dir or data lengths

    @property
    def total_bytes(self) -> int:
        return sum(r.disk.total_bytes for r in self.runs)

    @property
    def needs(self) -> int:
        """Bytes still to be written, each run at its peak (conservative: runs that end hold one state less)."""
        return sum(r.needs for r in self.runs)

    @property
    def available(self) -> int | None:
        left = [x for x in (self.free_bytes, self.quota.left if self.quota else None) if x is not None]
        return min(left) if left else None

    @property
    def fits(self) -> bool:
        return self.available is None or self.needs <= self.available

    def problem(self) -> str | None:
        """Why the sweep cannot fit, naming the runs and the field that would make it fit (None: it fits)."""
        if self.fits or self.available is None:
            return None
        big = sorted(self.runs, key=lambda r: -r.needs)
        named = ", ".join(f"{r.run} ({human_bytes(r.needs)}: {r.disk.trainer_states_kept} trainer states of "
                          f"{human_bytes(r.disk.trainer_state_bytes)})" for r in big[:NAMED])
        more = f" and {len(big) - NAMED} more" if len(big) > NAMED else ""
        lever = sum(r.needs_with_lever for r in self.runs)
        limit = (f"is left under the {self.quota.source} limit" if self.quota and self.available == self.quota.left
                 else "is free")
        head = (f"the sweep needs ~{human_bytes(self.needs)} more on {self.mount} ({self.experiment_dir}) but "
                f"{human_bytes(self.available)} {limit}: runs {named}{more}")
        if lever <= self.available and lever < self.needs:
            return f"{head}; set {LEVER}: 1 (one trainer state per run: needs ~{human_bytes(lever)})"
        return (f"{head}; even with {LEVER}: 1 it needs ~{human_bytes(lever)}: free space, move the experiment to "
                "a larger filesystem, or plan fewer runs")


def run_parts(cfg: RunConfig, lengths: SplitLengths) -> list[Part]:
    """The run (or each stage) with its training rows per epoch, as the trainer will batch them."""
    parts = []
    for part in [cfg.stage_config(i) for i in range(len(cfg.stages))] or [cfg]:
        t = part.training
        assert t is not None
        train = [n for n, _ in lengths(part).get("train", ())]
        rows = simulate_bfd_packing(train, t.max_seq_len).sequences if t.packing and train else len(train)
        parts.append(Part(t, rows, len(train)))
    return parts


def eval_samples(cfg: RunConfig, lengths: SplitLengths) -> int:
    """Samples one evaluated checkpoint scores over its built-in tasks on the run's dataset (a task file's: 0)."""
    per_split = lengths(cfg)
    total = 0
    for task in cfg.eval.resolved_tasks():
        if task.builtin is not None and task.dataset in (None, cfg.dataset.name):
            n = len(per_split.get(task.split, ()))
            limit = task.limit or cfg.eval.limit
            total += min(n, limit) if limit else n
    return total


def sweep_storage(runs: Sequence[RunConfig], dtype_of: Callable[[RunConfig], str], lengths: SplitLengths | None,
                  estimates: dict[str, RunEstimate] | None = None, gpu_job: bool = False) -> SweepStorage | None:
    """Each fine-tuned run's disk use (set as its estimate's `disk`, which run.yaml carries to the report) and
    the filesystem's free space and quota. None without fine-tuned runs."""
    tuned = [c for c in runs if c.training is not None]
    if not tuned:
        return None
    exp = Path(tuned[0].experiment_dir)
    found, skipped = [], []
    for cfg in tuned:
        if lengths is None or not Path(cfg.model.path).is_dir():
            skipped.append(cfg.name)
            continue
        est = (estimates or {}).get(cfg.name)
        parts = run_parts(cfg, lengths)
        samples = eval_samples(cfg, lengths)
        disk = run_disk(cfg, parts, dtype_of(cfg), est, samples, gpu_job)
        one = [Part(p.training.model_copy(update={"keep_checkpoints": 1}), p.rows, p.examples) for p in parts]
        found.append(RunStorage(cfg.name, disk, directory_bytes(cfg.run_dir),
                                run_disk(cfg, one, dtype_of(cfg), est, samples, gpu_job)))
        if est is not None:
            est.disk = disk
    return SweepStorage(str(exp), str(mount_point(exp)), found, free_bytes(exp), read_quota(exp), skipped)


def dtype_rule(gpu: Any) -> Callable[[RunConfig], str]:
    """The dtype each run trains in on this GPU (None: on CPU), as plan and validate model it."""
    def dtype_of(cfg: RunConfig) -> str:
        assert cfg.training is not None
        return cfg.training.planned_dtype(gpu.compute_capability if gpu is not None else None)

    return dtype_of


def plan_storage(plan: Any, lengths: SplitLengths) -> list[str]:
    """The plan's storage check (planner.make_plan, after the estimates): each run's estimate gets its `disk`;
    returns the warning of a sweep that cannot fit (validate fails on it)."""
    storage = sweep_storage(plan.finetune_runs, dtype_rule(plan.gpu), lengths, plan.estimates, plan.gpu is not None)
    problem = storage.problem() if storage is not None else None
    return [problem] if problem else []


def storage_lines(plan: Any) -> list[str]:
    """plan.md's Storage section, from the disk estimates plan_storage left in the runs' estimates."""
    dirs = {c.name: c.run_dir for c in plan.finetune_runs}
    runs = [RunStorage(e.run, e.disk, directory_bytes(dirs[e.run])) for e in plan.estimates.values()
            if e.disk is not None and e.run in dirs]
    if not runs:
        return []
    exp = Path(plan.experiment_dir)
    storage = SweepStorage(str(exp), str(mount_point(exp)), runs, free_bytes(exp), read_quota(exp))
    lines = ["## Storage", "",
             "| Run | Adapter | Epoch checkpoints | Trainer states kept (each) | Logs | Eval logs | Total | Peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in storage.runs:
        d = r.disk
        lines.append(f"| {r.run} | {human_bytes(d.adapter_bytes)} | {d.epoch_checkpoints} × "
                     f"{human_bytes(d.epoch_checkpoint_bytes)} | {d.trainer_states_kept} × "
                     f"{human_bytes(d.trainer_state_bytes)} | {human_bytes(d.log_bytes)} | {human_bytes(d.eval_bytes)} "
                     f"| {human_bytes(d.total_bytes)} | {human_bytes(d.peak_bytes)} |")
    quota = (f"; quota ({storage.quota.source}): {human_bytes(storage.quota.left)} left of "
             f"{human_bytes(storage.quota.limit)}" if storage.quota else "; no quota reported (`lfs quota`, `quota`)")
    lines += ["", f"**Sweep:** {human_bytes(storage.total_bytes)} when done, ~{human_bytes(storage.needs)} still to "
              f"write at the runs' peaks; `{storage.mount}` has {human_bytes(storage.free_bytes)} free{quota}. "
              + ("✓ fits." if storage.fits else f"**Does not fit:** {storage.problem()}"),
              "", "Adapter: exact from the LoRA shapes and rank; optimizer: AdamW's 2 moments per trainable parameter "
              "plus torch's file overhead; logs and eval logs: estimated per row and per sample scored. Peak: a save "
              "holds one trainer state more until retention (training.keep_checkpoints) drops the oldest.",
              ""]
    if storage.not_estimated:
        lines += [f"Not estimated (no local model directory or data lengths): {', '.join(storage.not_estimated)}.", ""]
    return lines
