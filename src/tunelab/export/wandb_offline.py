"""`tunelab export DIR --to wandb`: offline W&B runs, written without network (compute nodes can export), that `wandb
sync` uploads later; one run per tunelab run, grouped by sweep.

Idempotent by run id: each run's id is derived from (experiment dir, run name), so a later export syncs to the same W&B
run, and one offline directory per id is kept (written in staging, moved in place of the previous). `wandb-export.json`
records a fingerprint per id, so an unchanged run is not written or uploaded again. wandb is an optional extra."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tunelab.errors import TunelabError
from tunelab.export.records import STEP_FIELDS, TrackedRun, TrackedSweep, sweep_record
from tunelab.fsutil import atomic_write_text
from tunelab.rundir.layout import RunState

MANIFEST = "wandb-export.json"
FORMAT = 1  # bump when what a run holds changes, so the next export rewrites every run
MISSING = "W&B is not installed: pip install 'tunelab[wandb]'"
# nothing reaches for the network or the terminal: offline, no console capture, no system/git/code probes
QUIET_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true",
             "WANDB_DISABLE_CODE": "true", "WANDB_DISABLE_JOB_CREATION": "true"}


@dataclass
class WandbExport:
    wandb_dir: Path
    project: str
    group: str
    written: list[str]  # tunelab run names written (new or changed)
    unchanged: list[str]  # already exported with the same content: skipped

    @property
    def sync_command(self) -> str:
        return f"wandb sync {shlex.quote(str(self.wandb_dir))}"


class _Entry(BaseModel):
    run: str
    experiment_dir: str
    dir: str  # the offline-run-* directory name inside the export dir
    fingerprint: str


class _Manifest(BaseModel):
    format: int = FORMAT
    runs: dict[str, _Entry] = {}  # W&B run id -> what was written for it


def run_id(experiment_dir: Path, run_name: str) -> str:
    """Stable W&B run id of one tunelab run (W&B ids: letters, digits, '-'; unique within a project)."""
    return "tl-" + hashlib.sha256(f"{experiment_dir}\0{run_name}".encode()).hexdigest()[:16]


def _files(record: TrackedRun, sweep: TrackedSweep) -> dict[str, Path]:
    """{path inside the W&B run's files: source file}."""
    files = {f"tunelab/{n}": record.run_dir / n for n in ("run.yaml", "summary.json") if (record.run_dir / n).is_file()}
    if sweep.report_dir is not None:
        files.update({f"report/{p.relative_to(sweep.report_dir).as_posix()}": p
                      for p in sorted(sweep.report_dir.rglob("*")) if p.is_file()})
    return files


def _summary(record: TrackedRun) -> dict[str, Any]:
    """Points that are not per-step series, one value each; eval scores per epoch when several were evaluated."""
    by_key: dict[str, dict[int, float]] = defaultdict(dict)
    for p in record.metrics:
        if p.key not in STEP_FIELDS:
            by_key[p.key][p.step] = p.value
    out: dict[str, Any] = {"tunelab.state": record.state, "tunelab.kind": record.kind}
    if record.error:
        out["tunelab.error"] = record.error
    for key, values in by_key.items():
        out[key] = values[max(values)]
        if key.startswith("eval.") and len(values) > 1:
            out.update({f"{key}/epoch_{step}": v for step, v in sorted(values.items())})
    return out


def _history(record: TrackedRun) -> list[tuple[int, dict[str, float]]]:
    """metrics.jsonl's per-step fields as one row per training step, in step order (W&B needs steps increasing)."""
    rows: dict[int, dict[str, float]] = defaultdict(dict)
    for p in record.metrics:
        if p.key in STEP_FIELDS:
            rows[p.step].update({p.key: p.value, "_timestamp": p.timestamp_ms / 1000})
    return sorted(rows.items())


def _fingerprint(record: TrackedRun, files: dict[str, Path], project: str, group: str) -> str:
    digest = hashlib.sha256(json.dumps(
        [FORMAT, project, group, record.name, record.kind, record.state, record.error, record.config,
         [asdict(p) for p in record.metrics]], sort_keys=True).encode())
    for rel, path in sorted(files.items()):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@contextmanager
def _offline_env() -> Iterator[Any]:
    """Import wandb with the environment that keeps it offline and quiet; restore the environment after."""
    saved = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    try:
        try:
            import wandb
        except ImportError as exc:
            raise TunelabError(MISSING, field="--to wandb") from exc
        try:
            yield wandb
        finally:
            wandb.teardown()  # stop wandb's service process now, not at interpreter exit
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _settings(wandb) -> Any:
    return wandb.Settings(mode="offline", silent=True, quiet=True, show_info=False, show_warnings=False,
                          console="off", disable_git=True, disable_code=True, save_code=False,
                          disable_job_creation=True, x_disable_stats=True, x_disable_meta=True,
                          x_disable_machine_info=True, x_save_requirements=False)


def _log_run(run, record: TrackedRun, files: dict[str, Path]) -> None:
    for step, row in _history(record):
        run.log(row, step=step)
    run.summary.update(_summary(record))
    for rel, src in files.items():
        dest = Path(run.dir) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)  # a copy, not wandb's symlink: the export stays syncable if the sweep moves
        run.save(str(dest), base_path=run.dir, policy="now")


def _write_run(wandb, record: TrackedRun, files: dict[str, Path], out: Path, rid: str, project: str, group: str) -> str:
    """Write one offline run in a staging dir and move it in place of the id's previous directories."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging-") as staging:
        run = wandb.init(dir=staging, id=rid, project=project, group=group, name=record.name,
                         job_type=record.kind, tags=[record.kind, record.state], config=record.config,
                         settings=_settings(wandb), reinit="create_new")
        failed = True
        try:
            _log_run(run, record, files)
            failed = False
        finally:
            run.finish(exit_code=1 if failed or record.state in (RunState.FAILED, RunState.INTERRUPTED) else 0)
        (written,) = Path(staging, "wandb").glob(f"offline-run-*-{rid}")
        if (out / written.name).exists():
            shutil.rmtree(out / written.name)
        written.rename(out / written.name)
    for old in out.glob(f"offline-run-*-{rid}"):
        if old.name != written.name:
            shutil.rmtree(old)
    return written.name


def _read_manifest(path: Path) -> _Manifest:
    try:
        manifest = _Manifest.model_validate_json(path.read_text())
    except (OSError, ValidationError):
        return _Manifest()  # none yet, or unreadable: every run is rewritten (still one directory per id)
    return manifest if manifest.format == FORMAT else _Manifest()


def export_wandb(experiment_dir: str | Path, wandb_dir: str | Path | None = None,
                 project: str | None = None) -> WandbExport:
    """Write (or bring up to date) one offline W&B run per tunelab run under wandb_dir (default <experiment>/wandb)."""
    with _offline_env() as wandb:  # first: a missing extra is said before any work
        sweep = sweep_record(experiment_dir)
        out = Path(wandb_dir).resolve() if wandb_dir else sweep.experiment_dir / "wandb"
        project = project or sweep.name
        manifest = _read_manifest(out / MANIFEST)
        result = WandbExport(out, project, sweep.name, [], [])
        for record in sweep.runs:
            rid = run_id(sweep.experiment_dir, record.name)
            files = _files(record, sweep)
            fingerprint = _fingerprint(record, files, project, sweep.name)
            old = manifest.runs.get(rid)
            if old is not None and old.fingerprint == fingerprint and (out / old.dir).is_dir():
                result.unchanged.append(record.name)
                continue
            out.mkdir(parents=True, exist_ok=True)
            name = _write_run(wandb, record, files, out, rid, project, sweep.name)
            manifest.runs[rid] = _Entry(run=record.name, experiment_dir=str(sweep.experiment_dir), dir=name,
                                        fingerprint=fingerprint)
            atomic_write_text(out / MANIFEST, manifest.model_dump_json(indent=1))
            result.written.append(record.name)
    return result
