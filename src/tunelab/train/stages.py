"""Staged runs (run.yaml `stages:`): stage k trains from stage k-1's final adapter, in the run's own directory.

Every stage writes into the run's files as one continuous run: metrics.jsonl steps and epochs count on
from the stages before (each row names its stage), epoch checkpoints are numbered across stages
(checkpoints/epoch_N, so evaluation, the report and archiving see one sequence), and stages.json maps them
back (stage, its epochs, its steps). Each stage keeps its own trainer state (trainer_state/STAGE/) and
is recorded in stages.json only once complete: a failure in stage 3 resumes stage 3 and never reruns 1-2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_json, read_json
from tunelab.runconfig import RunConfig
from tunelab.train import status as st
from tunelab.train.checkpoints import complete_epochs, epoch_dir, last_complete_checkpoint

if TYPE_CHECKING:  # the report reads stages.json through this module: no torch import for it
    from tunelab.train.metrics import Counters

STAGES_FILE = "stages.json"


@dataclass(frozen=True)
class StageContext:
    """Where one stage sits in its run: offsets of its steps and epochs, its trainer-state directory, and
    what it starts from. An unstaged run is the single stage with no name and no offsets."""

    name: str | None = None
    index: int = 0
    optimizer: str = "fresh"
    count: int = 1
    step_offset: int = 0
    epoch_offset: int = 0
    init_adapter: Path | None = None  # the previous stage's final adapter
    init_optimizer: Path | None = None  # the previous stage's last trainer checkpoint (optimizer: carried)
    counters: "Counters | None" = None  # the run's counters when the previous stage ended

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    def state_dir(self, run_dir: Path) -> Path:
        return stage_state_dir(run_dir, self.name)

    def label(self) -> str:
        return f"stage {self.index + 1}/{self.count} ({self.name})" if self.name else ""


def stage_state_dir(run_dir: str | Path, stage: str | None) -> Path:
    """Where a stage keeps its trainer state: trainer_state/STAGE/ (an unstaged run: trainer_state/)."""
    base = Path(run_dir) / st.TRAINER_STATE_DIR
    return base / stage if stage else base


@dataclass
class StageRecord:
    """A completed stage, as stages.json keeps it."""

    name: str
    index: int
    dataset: str
    optimizer: str
    epochs: list[int]  # global epoch indices (checkpoints/epoch_N) this stage published
    first_step: int  # the run's step before the stage's first (its offset)
    last_step: int
    examples: int
    counters: dict[str, Any]
    final_loss: float | None = None
    duration_s: float | None = None


def read_stage_records(run_dir: str | Path) -> list[StageRecord]:
    """The completed stages, in order ([] for an unstaged run or before stage 1 completes)."""
    rows = read_json(Path(run_dir) / STAGES_FILE, default=None) or []
    return [StageRecord(**r) for r in rows]


STAGE_FIELDS = ("stage", "stage_epoch", "ends_stage")  # to_dict's keys, in results and export records
NO_STAGE = dict.fromkeys(STAGE_FIELDS)  # an unstaged checkpoint's


@dataclass(frozen=True)
class CheckpointStage:
    """Where a staged run's checkpoint epoch_N sits: its stage, its epoch within the stage, and whether the
    stage ends on it (the checkpoint scored "after the stage")."""

    stage: str
    epoch: int
    ends_stage: bool

    @property
    def label(self) -> str:
        """'STAGE/epoch_K', as the report writes it beside epoch_N."""
        return f"{self.stage}/epoch_{self.epoch}"

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(STAGE_FIELDS, (self.stage, self.epoch, self.ends_stage)))


def checkpoint_stages(cfg: RunConfig, records: list[StageRecord] | None = None) -> dict[int, CheckpointStage]:
    """{global epoch: its stage}: the completed stages' as stages.json records them (default: read from the run
    directory), then the stages still to come as planned (each its training.epochs on from the last recorded
    epoch; none past a stage that stops at max_steps, whose epochs are known only once it completes). {} for
    an unstaged run, or when stages.json no longer matches run.yaml. The report and every machine-readable
    output (results, export) read a checkpoint's stage from here."""
    records = read_stage_records(cfg.run_dir) if records is None else records
    if not cfg.stages or [r.name for r in records] != [s.name for s in cfg.stages[:len(records)]]:
        return {}
    out = {e: CheckpointStage(r.name, k, k == len(r.epochs) - 1) for r in records for k, e in enumerate(r.epochs)}
    nxt = max(out, default=-1) + 1
    for s in cfg.stages[len(records):]:
        if s.training.max_steps is not None:
            break
        n = s.training.epochs
        out.update({nxt + k: CheckpointStage(s.name, k, k == n - 1) for k in range(n)})
        nxt += n
    return out


def record_stage(run_dir: Path, ctx: StageContext, cfg: RunConfig, summary: dict[str, Any],
                 counters: dict[str, Any]) -> StageRecord:
    """Add the stage just completed to stages.json (main process; the record is what marks it complete)."""
    done = [r for r in read_stage_records(run_dir) if r.index < ctx.index]
    rec = StageRecord(name=ctx.name or "", index=ctx.index, dataset=cfg.dataset.name,
                      optimizer=ctx.optimizer,
                      epochs=[e for e in complete_epochs(run_dir) if e >= ctx.epoch_offset],
                      first_step=ctx.step_offset, last_step=int(summary.get("steps") or ctx.step_offset),
                      examples=int(summary.get("train_examples") or 0), counters=counters,
                      final_loss=summary.get("stage_final_loss"), duration_s=summary.get("stage_duration_s"))
    atomic_write_json(run_dir / STAGES_FILE, [asdict(r) for r in [*done, rec]])
    return rec


def next_stage(cfg: RunConfig, run_dir: Path) -> StageContext | None:
    """The first stage not yet complete (None when every stage is), with its offsets and starting point.
    Raises when the recorded stages no longer match run.yaml's (a spec changed after training began)."""
    done = read_stage_records(run_dir)
    names = [s.name for s in cfg.stages]
    if [r.name for r in done] != names[:len(done)]:
        raise TunelabError(f"stages.json records stages {[r.name for r in done]} but run.yaml has {names}: "
                           "the stages changed after training began; start the run again in a fresh directory",
                           file=run_dir / STAGES_FILE)
    i = len(done)
    if i == len(names):
        return None
    prev = done[-1] if done else None
    init_optimizer = None
    if prev is not None and cfg.stages[i].optimizer == "carried":
        init_optimizer = last_complete_checkpoint(stage_state_dir(run_dir, prev.name))
        if init_optimizer is None:
            raise TunelabError(f"stage {cfg.stages[i].name}: optimizer: carried, but stage {prev.name} kept no "
                               "complete trainer checkpoint", file=stage_state_dir(run_dir, prev.name))
    from tunelab.train.metrics import Counters

    return StageContext(
        name=names[i], index=i, count=len(names), optimizer=cfg.stages[i].optimizer,
        step_offset=prev.last_step if prev else 0,
        epoch_offset=(max(prev.epochs) + 1 if prev.epochs else 0) if prev else 0,
        init_adapter=epoch_dir(run_dir, max(prev.epochs)) if prev and prev.epochs else None,
        init_optimizer=init_optimizer,
        counters=Counters(**prev.counters) if prev else None)


def current_stage(cfg: RunConfig) -> int | None:
    """The index of the first stage not yet complete (the one a failure happened in); None when unstaged
    or every stage is complete."""
    if not cfg.stages:
        return None
    done = len(read_stage_records(cfg.run_dir))
    return done if done < len(cfg.stages) else None


def current_state_dir(cfg: RunConfig) -> Path:
    """The trainer-state directory a resume of this run would read."""
    i = current_stage(cfg)
    return stage_state_dir(cfg.run_dir, cfg.stages[i].name if i is not None else None)


def restart_current_stage(cfg: RunConfig) -> None:
    """Drop the current stage's trainer state and the epochs it published: it starts again from the end of
    the stage before (a retry that cannot resume exactly); earlier stages are kept."""
    import shutil

    i = current_stage(cfg)
    if i is None:
        return
    shutil.rmtree(stage_state_dir(cfg.run_dir, cfg.stages[i].name), ignore_errors=True)
    kept = {e for r in read_stage_records(cfg.run_dir) for e in r.epochs}
    for e in complete_epochs(cfg.run_dir):
        if e not in kept:
            shutil.rmtree(epoch_dir(cfg.run_dir, e), ignore_errors=True)


def train_stages(cfg: RunConfig) -> dict[str, Any]:
    """Train the stages not yet complete, in order; the last one writes the run's summary.json."""
    from tunelab.train.distributed import barrier
    from tunelab.train.runner import train_run

    summary: dict[str, Any] = {}
    while True:
        ctx = next_stage(cfg, cfg.run_dir)
        if ctx is None:
            return summary or (read_json(cfg.run_dir / st.SUMMARY_FILE, default={}) or {})
        summary = train_run(cfg.stage_config(ctx.index), ctx)  # {} on processes other than the main one
        barrier()  # stage k+1 reads what the main process recorded for stage k


def stages_summary(run_dir: Path) -> list[dict[str, Any]]:
    """The per-stage part of summary.json."""
    return [{k: v for k, v in asdict(r).items() if k != "counters"} for r in read_stage_records(run_dir)]


def load_optimizer_state(optimizer, checkpoint: Path) -> None:
    """Carry the previous stage's optimizer moments into this stage's optimizer, keeping this stage's
    learning rates (its schedule was built with them; the loaded groups would bring the old ones)."""
    import torch

    lrs = [(g.get("lr"), g.get("initial_lr")) for g in optimizer.param_groups]
    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state)
    for g, (lr, initial) in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
        if initial is not None:
            g["initial_lr"] = initial

