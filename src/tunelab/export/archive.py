"""`tunelab archive DIR --to ARCHIVE`: keep what matters, verified, then free the space of what does not.

What is kept (spec, plan, run files, metrics, logs, scores, ledger, report, the adapters --keep names) is copied to
ARCHIVE/<experiment>/ and checked by sha256; only when every copy matches does anything leave the working directory, and
only what a finished run no longer needs (trainer_state/, checkpoints not kept). archive.json in both places records
what went where."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.execute.claims import experiment_lock
from tunelab.fsutil import atomic_write_json, sha256_of
from tunelab.rundir import layout
from tunelab.rundir.archive import MANIFEST, ArchiveManifest, read_manifest
from tunelab.rundir.experiment import load_runs, training_state
from tunelab.rundir.status import now_iso

KEEP = ("adapters", "last-epoch", "none")
TRANSIENT = {".tunelab.lock", ".runs-cache.json", ".claim", MANIFEST}  # never copied
EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


@dataclass
class ArchivePlan:
    experiment_dir: Path
    archive_dir: Path
    keep: str
    copy: list[str] = field(default_factory=list)  # files, relative to the experiment dir
    remove: list[str] = field(default_factory=list)  # directories removed once the copy is verified
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each path above
    untouched: dict[str, str] = field(default_factory=dict)  # run -> why nothing of it is removed

    @property
    def copy_bytes(self) -> int:
        return sum(self.sizes[p] for p in self.copy)

    @property
    def remove_bytes(self) -> int:
        return sum(self.sizes[p] for p in self.remove)


def _kept_epochs(ckpt_dir: Path, keep: str) -> tuple[list[Path], list[Path]]:
    """(kept, dropped) epoch_N checkpoint directories of one run, by --keep."""
    numbered = [(int(m.group(1)), p) for p in ckpt_dir.glob("epoch_*") if p.is_dir() and (m := EPOCH_DIR.match(p.name))]
    epochs = [p for _, p in sorted(numbered, key=lambda pair: pair[0])]
    n = {"adapters": len(epochs), "last-epoch": min(1, len(epochs)), "none": 0}[keep]
    return epochs[len(epochs) - n:], epochs[:len(epochs) - n]


def plan_archive(experiment_dir: str | Path, archive_root: str | Path, keep: str = "adapters") -> ArchivePlan:
    """What would be copied and what removed; refuses while a run is training."""
    if keep not in KEEP:
        raise TunelabError(f"unknown --keep {keep!r}: use one of {', '.join(KEEP)}", field="--keep")
    exp = Path(experiment_dir).resolve()
    runs = load_runs(exp)
    archive_dir = Path(archive_root).resolve() / exp.name
    if archive_dir == exp or exp in archive_dir.parents:
        raise TunelabError("the archive must be outside the experiment directory", file=archive_dir)
    plan = ArchivePlan(exp, archive_dir, keep)
    heavy: set[Path] = set()  # never copied: trainer state and dropped checkpoints
    for cfg in runs:
        if cfg.kind != "finetune":
            continue
        state = training_state(cfg.run_dir)
        if state == layout.RUNNING:
            raise TunelabError(f"run {cfg.name} is training: archive once the sweep has ended", file=cfg.run_dir)
        kept, dropped = _kept_epochs(cfg.run_dir / layout.CHECKPOINTS_DIR, keep)
        trainer = cfg.run_dir / layout.TRAINER_STATE_DIR
        heavy.update(dropped + ([trainer] if trainer.is_dir() else []))
        if state != layout.COMPLETED:
            plan.untouched[cfg.name] = f"{state}: its checkpoints and trainer state stay for a resume"
            continue
        for d in dropped + ([trainer] if trainer.is_dir() else []):
            rel = str(d.relative_to(exp))
            plan.remove.append(rel)
            plan.sizes[rel] = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    for path in sorted(exp.rglob("*")):
        if not path.is_file() or path.name in TRANSIENT or any(h in path.parents for h in heavy):
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue  # a temp file of an atomic write in progress or abandoned
        rel = str(path.relative_to(exp))
        plan.copy.append(rel)
        plan.sizes[rel] = path.stat().st_size
    return plan


def _copy_verified(src: Path, dest: Path, copy_file: Callable[[Path, Path], object]) -> str:
    """Copy src to dest (temp file, then rename) unless dest holds the same bytes; the sha256; raises on mismatch."""
    digest = sha256_of(src)
    if dest.is_file() and sha256_of(dest) == digest:
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        copy_file(src, Path(tmp))
        shutil.copystat(src, tmp)
        got = sha256_of(Path(tmp))
        if got != digest:
            raise TunelabError(f"the copy does not match its source (sha256 {got[:12]}… ≠ {digest[:12]}…): "
                               "nothing was removed from the working directory", file=dest)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest


def run_archive(plan: ArchivePlan, copy_file: Callable[[Path, Path], object] = shutil.copyfile,
                progress: Callable[[str], None] | None = None) -> ArchiveManifest:
    """Copy and verify everything, write the archive's manifest, then remove the heavy directories."""
    exp = plan.experiment_dir
    with experiment_lock(exp, wait=False) as held:
        if not held:
            raise TunelabError("another tunelab command is working on this experiment: archive when it has "
                               "finished", file=exp)
        files = {}
        for rel in plan.copy:
            files[rel] = _copy_verified(exp / rel, plan.archive_dir / rel, copy_file)
            if progress:
                progress(rel)
        removed = {rel: plan.sizes[rel] for rel in plan.remove}
        previous = read_manifest(exp)
        if previous and previous.archive_dir == str(plan.archive_dir):
            removed = {**previous.removed, **removed}  # what an earlier archive removed is still gone
        manifest = ArchiveManifest(now_iso(), str(exp), str(plan.archive_dir), plan.keep, files,
                                   plan.copy_bytes, removed, sum(removed.values()), plan.untouched)
        atomic_write_json(plan.archive_dir / MANIFEST, asdict(manifest))
        for rel in plan.remove:
            shutil.rmtree(exp / rel)
        atomic_write_json(exp / MANIFEST, asdict(manifest))
    return manifest
