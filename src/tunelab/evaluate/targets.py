"""What a run evaluates (its targets: epoch checkpoints, a control's base, an eval-only checkpoint), and which weights a
directory name stands for (`--model tunelab/<dir>`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.rundir.checkpoints import complete_epochs, epoch_dir, is_complete_checkpoint
from tunelab.rundir.config import RUN_FILE, RunConfig, load_run_config
from tunelab.rundir.layout import ADAPTER_FILES, CHECKPOINTS_DIR, epoch_name, parse_epoch_name
from tunelab.rundir.stages import read_stage_records
from tunelab.spec import EpochChoice

BASE_LABEL = "base"
CHECKPOINT_LABEL = "checkpoint"


@dataclass(frozen=True)
class Target:
    """One set of weights to evaluate: a checkpoint epoch, a base model or an eval-only checkpoint."""

    label: str  # epoch_N | base | checkpoint: the directory name under <run>/eval/
    epoch: int | None
    base_path: Path
    adapter_path: Path | None


def select_targets(cfg: RunConfig, epochs: EpochChoice | None = None) -> list[Target]:
    """A run's targets: one for controls and eval-only runs; a fine-tuned run's chosen epochs (incomplete: an error)."""
    base = Path(cfg.model.path)
    if cfg.kind == "control":
        return [Target(BASE_LABEL, None, base, None)]
    if cfg.kind == "eval_only":
        return [eval_only_target(cfg)]
    epochs = cfg.eval.epochs if epochs is None else epochs
    available = complete_epochs(cfg.run_dir)
    ckpt_root = cfg.run_dir / CHECKPOINTS_DIR
    if not available:
        raise TunelabError("no complete checkpoint to evaluate (expected epoch_N/ with "
                           + " and ".join(ADAPTER_FILES) + ")", file=ckpt_root)
    if epochs == "last":
        chosen = [available[-1]]
    elif epochs == "stages":  # each stage's last epoch (an unstaged run: its last)
        ends = {max(r.epochs) for r in read_stage_records(cfg.run_dir) if r.epochs}
        chosen = sorted(ends & set(available)) or [available[-1]]
    elif epochs == "all":
        chosen = available
    else:
        missing = [e for e in epochs if e not in available]
        if missing:
            raise TunelabError(f"no complete checkpoint for epoch(s) {missing}; complete: {list(available)}",
                               file=ckpt_root)
        chosen = sorted(set(epochs))
    return [Target(epoch_name(e), e, base, epoch_dir(cfg.run_dir, e)) for e in chosen]


def eval_only_target(cfg: RunConfig) -> Target:
    """An eval-only checkpoint: a full model when it is its own base, else an adapter on cfg.model."""
    if not cfg.checkpoint:
        raise TunelabError("an eval_only run needs `checkpoint` in its run.yaml", file=cfg.run_dir / RUN_FILE)
    ckpt, base = Path(cfg.checkpoint), Path(cfg.model.path)
    full = ckpt.resolve() == base.resolve()
    if not full and not (ckpt / "adapter_config.json").is_file():
        raise TunelabError("eval_only checkpoint is neither its base model nor a PEFT adapter "
                           "(no adapter_config.json)", file=ckpt)
    return Target(CHECKPOINT_LABEL, None, base, None if full else ckpt)


def parse_epochs(text: str | None) -> EpochChoice | None:
    """`--epochs`: last | all | stages | a comma-separated list of epochs (0,2); None/'' = the spec's choice."""
    if not text:
        return None
    if text in ("last", "all", "stages"):
        return text  # type: ignore[return-value]
    try:
        epochs = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        epochs = []
    if not epochs or any(e < 0 for e in epochs):
        raise TunelabError(f"'{text}' is not last, all, stages, or a list of epochs such as 0,2", field="--epochs")
    return epochs


def resolve_model_dir(path: str | Path) -> tuple[RunConfig, Target]:
    """What `--model tunelab/<path>` means: a run dir → its last complete epoch; runs/<r>/checkpoints/
    epoch_N → that epoch of run r; a control dir → its base model; an eval-only dir → its checkpoint."""
    p = Path(path).expanduser().resolve()
    if (p / RUN_FILE).is_file():
        cfg = load_run_config(p)  # placed where its run.yaml is: moved or copied whole
        return cfg, select_targets(cfg, "last")[0]
    parent, epoch = p.parent, parse_epoch_name(p.name)
    if epoch is not None and parent.name == CHECKPOINTS_DIR and (parent.parent / RUN_FILE).is_file():
        cfg = load_run_config(parent.parent)
        if not is_complete_checkpoint(p):
            raise TunelabError("incomplete checkpoint (expected " + " and ".join(ADAPTER_FILES) + ")", file=p)
        return cfg, Target(p.name, epoch, Path(cfg.model.path), p)
    raise TunelabError("not a tunelab run, control or eval-only directory (no run.yaml), nor a checkpoint "
                       "runs/<run>/checkpoints/epoch_N", file=p)
