"""The user-level history ledger: every run tunelab trains or ingests, across experiments, which plans learn speed and
peaks from ($TUNELAB_HISTORY, else ~/.local/share/tunelab/history.db). One row per measurement, keyed by the run's
identity (kept by a moved or copied experiment) or its source log."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, computed_field

from tunelab.catalog import Architecture, resolve_architecture
from tunelab.errors import TunelabError
from tunelab.fsutil import add_missing_columns, sqlite_session
from tunelab.host.cpuload import LoadWindow
from tunelab.ledger.submission import TrainingJob, dispatch_seconds
from tunelab.rundir.config import RunConfig
from tunelab.rundir.identity import training_key
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.status import now_iso
from tunelab.rundir.summary import Summary
from tunelab.spec import TrainingConfig

log = logging.getLogger("tunelab")

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    experiment TEXT,
    run TEXT,
    model TEXT,
    layers INTEGER,
    hidden INTEGER,
    parameters INTEGER,
    device TEXT,
    cpu_threads INTEGER,
    packed INTEGER,
    batch_size INTEGER,
    gradient_accumulation_steps INTEGER,
    max_seq_len INTEGER,
    lora_rank INTEGER,
    tokens_per_step REAL,
    tokens_per_s REAL,
    steps_per_s REAL,
    per_token_s REAL,
    step_fixed_s REAL,
    nonpad_tokens_per_s REAL,
    peak_memory_gib REAL,
    memory_kind TEXT,
    steps INTEGER,
    duration_s REAL,
    train_time_s REAL,
    overhead_s REAL,
    startup_s REAL,
    finish_s REAL,
    recorded_at TEXT
);
"""


@dataclass
class HistoryRun:
    """One history row: a run trained, probed or ingested, with where its figures came from."""

    # each field's docstring is its key's description in `history --json`'s schema (pydantic reads them)
    __pydantic_config__ = ConfigDict(use_attribute_docstrings=True)

    key: str
    """The row's identity: the run's (rundir/identity.py: its experiment, place and measurement; the run directory
    for a run without one), or the source log (and its line or key)."""
    source: str
    """What recorded it: tunelab, probe, or the foreign format ingested (torchtune, hf_trainer, ...)."""
    experiment: str | None = None
    """The experiment's name (None: not known)."""
    run: str | None = None
    """The run's name."""
    model: str | None = None
    """The model's name."""
    layers: int | None = None
    """The model's decoder layers (None: its config unreadable)."""
    hidden: int | None = None
    """The model's hidden size."""
    parameters: int | None = None
    """The model's parameter count."""
    device: str | None = None
    """The device it ran on, e.g. 'NVIDIA H100 80GB HBM3' or cpu."""
    cpu_threads: int | None = None
    """Torch threads on a CPU run."""
    cpu_model: str | None = None
    """The CPU's model a CPU run trained on (host/machine.py); None: a GPU's, or not recorded."""
    packed: bool | None = None
    """Sequences packed (padding-free)."""
    batch_size: int | None = None
    """The micro-batch per device."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per optimizer step."""
    max_seq_len: int | None = None
    """Tokens per sequence at most."""
    lora_rank: int | None = None
    """The LoRA rank."""
    tokens_per_step: float | None = None
    """Tokens per optimizer step, per device."""
    tokens_per_s: float | None = None
    """Training throughput per device, tokens/s (padding included)."""
    steps_per_s: float | None = None
    """Optimizer steps per second."""
    per_token_s: float | None = None
    """Step time = step_fixed_s + per_token_s x tokens per step: the per-token part, seconds."""
    step_fixed_s: float | None = None
    """The fixed part of a step's time, seconds."""
    nonpad_tokens_per_s: float | None = None
    """Throughput counting real (non-padding) tokens only."""
    peak_memory_gib: float | None = None
    """Peak memory measured, GiB (memory_kind says which counter)."""
    memory_kind: MemoryKind | None = None
    """Which counter the peak is: cuda_max_allocated, cuda_max_reserved, cuda_max_active, nvml_used, host_max_rss."""
    steps: int | None = None
    """Optimizer steps trained."""
    duration_s: float | None = None
    """Wall-clock of the whole run, seconds."""
    train_time_s: float | None = None
    """Seconds spent in training steps."""
    overhead_s: float | None = None
    """Seconds outside training steps (loading, evaluation, saving)."""
    save_s: float | None = None
    """Seconds one checkpoint save took, the run's mean (part of overhead_s)."""
    startup_s: float | None = None
    """Seconds before the first step."""
    finish_s: float | None = None
    """Seconds after the last step."""
    recorded_at: str | None = None
    """When the row was recorded (ISO 8601, UTC)."""
    origin: str | None = None
    """measured (a tunelab run), probed (`tunelab probe`) or ingested (a foreign log or output dir)."""
    origin_where: str | None = None
    """The file, line or key it was read from."""
    final_loss: float | None = None
    """Last training loss."""
    final_val_loss: float | None = None
    """Last validation loss."""
    epochs: float | None = None
    """Epochs trained."""
    lora_targets: str | None = None
    """LoRA's target modules, comma-separated, or all-linear."""
    dtype: str | None = None
    """The training dtype."""
    gradient_checkpointing: bool | None = None
    """Activation checkpointing on."""
    max_tokens_per_microbatch: int | None = None
    """The largest micro-batch's tokens (memory depends on it)."""
    missing: str | None = None
    """Fields its source did not have, comma-separated."""
    max_micro_batch: int | None = None
    """probe --find-max-batch: the largest micro-batch that ran a real step."""
    simulated_max_micro_batch: int | None = None
    """The simulator's largest micro-batch for the same GPU, beside it."""
    # the rest of what the peak depends on (estimate/measured.py compares every one); None: not recorded.
    # "No quantization" and "no modules_to_save" are recorded as "none" and "", so that None means unknown.
    quantize: str | None = None
    """4bit or none (None: unknown)."""
    attention: str | None = None
    """training.attention as run.yaml holds it (varlen, sdpa, ...)."""
    modules_to_save: str | None = None
    """Modules trained in full, comma-separated and sorted ('' : none; None: unknown)."""
    lora_dropout: float | None = None
    """LoRA dropout (above 0 keeps a mask per LoRA layer for the backward pass)."""
    processes: int | None = None
    """Training processes (a DDP or FSDP peak is not a one-device peak)."""
    # the machine's load while it was timed (tunelab/host/cpuload.py): None where it was not measured (older rows,
    # ingested runs, not Linux), which is unknown, never idle
    others_share: float | None = None
    """The share of its cores other processes held while it was timed (0..1)."""
    slowdown: float | None = None
    """How much slower than alone the share of the cores it had predicts (≥ 1; a lower bound; 1 on a GPU)."""
    contended: bool | None = None
    """Timed under contention: the slowdown above 1.15 (never on a GPU: `cpu_contended`)."""
    adapted_from: int | None = None
    """The threads its rule planned where the job took fewer for the cores others held at its start (host/adapt.py)."""
    measured_slowdown: float | None = None
    """How much slower than the uncontended rows of its shape at the planned threads it ran, measured (ledger/slowdown.py)."""
    time_spread: float | None = None
    """How far its repeated step timings disagreed: slowest/fastest − 1 at one micro-batch (a probe's rows)."""
    executor: str | None = None
    """The executor that ran its training: local, slurm or ray (run.yaml's resources.executor; None: not recorded)."""
    node: str | None = None
    """Where it ran: its scheduler's name for the job's node (a Ray node's address, Slurm's node list), else rank 0's
    in summary.json (its hostname; None: neither recorded)."""
    dispatch_s: float | None = None
    """Seconds from its training job's submission to the training process's creation (None: not submitted through
    tunelab's jobs, or recorded before; clamped at 0 where the two machines' clocks disagree)."""

    def __post_init__(self) -> None:
        # rows recorded before the vocabulary was one (a probe's cpu_max_rss) read as today's kind
        self.memory_kind = MemoryKind.read(self.memory_kind)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def kind(self) -> str:
        """measured, probed or ingested (rows from before the origin column: by their source)."""
        return self.origin or {"tunelab": "measured", "probe": "probed"}.get(self.source, "ingested")

    def of_architecture(self, arch: Architecture | None) -> bool:
        """Whether the row is of this model: the same layers, hidden size and parameter count (never of None)."""
        return arch is not None and (self.layers, self.hidden, self.parameters) == (arch.layers, arch.hidden,
                                                                                    arch.parameters)


def history_path() -> Path:
    env = os.environ.get("TUNELAB_HISTORY")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "tunelab" / "history.db"


@contextmanager
def connect(path: Path | None = None) -> Iterator[sqlite3.Connection]:
    """The history ledger, with the experiment ledger's network-filesystem-safe settings (home dirs are NFS)."""
    path = path or history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite_session(path) as conn:
        conn.executescript(SCHEMA)
        add_missing_columns(conn, "history", _columns())  # history is never dropped
        yield conn


def _columns() -> dict[str, str]:
    """{column: SQL type} of every HistoryRun field, for the rows of an older history file."""
    return {name: {"int": "INTEGER", "float": "REAL", "bool": "INTEGER"}.get(str(f.type).split(" ")[0], "TEXT")
            for name, f in HistoryRun.__dataclass_fields__.items()}


_BOOLS = {name for name, f in HistoryRun.__dataclass_fields__.items() if str(f.type).startswith("bool")}


def record(runs: list[HistoryRun], path: Path | None = None) -> None:
    if not runs:
        return
    cols = list(asdict(runs[0]))
    with connect(path) as conn:
        conn.executemany(
            f"INSERT OR REPLACE INTO history ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [tuple(asdict(r).values()) for r in runs],
        )


def load(path: Path | None = None, everything: bool = False) -> list[HistoryRun]:
    """Rows the planner can use (a measured speed), or with `everything` all of them (`tunelab history`)."""
    p = path or history_path()
    if not p.is_file():
        return []
    where = "" if everything else " WHERE tokens_per_s IS NOT NULL"
    with connect(p) as conn:
        rows = [dict(r) for r in conn.execute(f"SELECT * FROM history{where} ORDER BY recorded_at")]
    return [HistoryRun(**_read_bools(r)) for r in rows]


def _read_bools(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite stores a bool as 0/1: read back as the bool it was, so --json prints true/false as its schema says."""
    return {k: bool(v) if k in _BOOLS and v is not None else v for k, v in row.items()}


def _architecture_facts(cfg: RunConfig) -> tuple[int | None, int | None, int | None]:
    """(layers, hidden size, parameters) of the run's model; all None when its config cannot be read."""
    try:
        arch = resolve_architecture(cfg.model.path)
    except (TunelabError, OSError, ValueError) as exc:  # model dir moved or its config.json damaged
        # the measured speed is still worth keeping, but plans cannot scale it to other models: say so
        log.warning("warning: history: %s: model %s unreadable (%s); recorded without layers, hidden size and "
                    "parameter count", cfg.run_dir, cfg.model.path, exc)
        return None, None, None
    return arch.layers, arch.hidden, arch.parameters


def from_run_dir(cfg: RunConfig, summary: Summary, key: str | None = None, job: TrainingJob | None = None
                 ) -> HistoryRun:
    """A history row from a completed tunelab run; key: the run's identity (read from its files when not given); job:
    its training job as the experiment ledger recorded it (ledger/submission.py; None: none), for its dispatch."""
    t = cfg.training
    if t is None:
        raise ValueError(f"{cfg.name}: a {cfg.kind} run trains nothing: no history row")
    layers, hidden, params = _architecture_facts(cfg)
    steps = summary.steps or 0
    cost = summary.step_cost
    # per device, the planner's unit: a distributed run's tokens (and tokens/s) are all its processes'
    world = max(1, int(summary.world_size or 1))
    tps, nonpad_tps = summary.tokens_per_s, summary.nonpad_tokens_per_s
    return HistoryRun(
        key=key or training_key(cfg),
        source="tunelab",
        experiment=cfg.experiment,
        run=cfg.name,
        model=cfg.model.name,
        layers=layers,
        hidden=hidden,
        parameters=params,
        device=summary.device,
        cpu_threads=summary.cpu_threads,
        cpu_model=summary.cpu_model,
        packed=t.packing,
        batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_seq_len=t.max_seq_len,
        lora_rank=t.lora_rank,
        tokens_per_step=(summary.tokens or 0) / steps / world if steps else None,
        tokens_per_s=tps / world if tps else tps,
        nonpad_tokens_per_s=nonpad_tps / world if nonpad_tps else nonpad_tps,
        per_token_s=cost.per_token_s if cost else None,
        step_fixed_s=cost.fixed_s if cost else None,
        peak_memory_gib=summary.peak_memory_gib,
        memory_kind=summary.memory_kind,
        steps=steps,
        duration_s=summary.duration_s,
        train_time_s=summary.train_time_s,
        overhead_s=summary.overhead_s,
        save_s=summary.save_s,
        startup_s=summary.cold_startup_s(),  # a warm job's with the imports its warm process paid
        finish_s=summary.finish_s,
        recorded_at=now_iso(),
        origin="measured",
        origin_where=str(cfg.run_dir / "summary.json"),
        final_loss=summary.final_loss,
        final_val_loss=summary.final_val_loss,
        epochs=summary.epochs,
        dtype=summary.dtype,
        max_tokens_per_microbatch=_tokens_per_microbatch(cfg, t),
        processes=summary.world_size,
        **training_memory_fields(t),
        **load_fields(summary.load),
        adapted_from=summary.threads.adapted_from if summary.threads is not None else None,
        executor=str(cfg.resources.executor),
        node=(job.node if job else None) or (summary.processes[0].node if summary.processes else None),
        dispatch_s=dispatch_seconds(job, summary.process_started_at),
    )


def load_fields(load: LoadWindow | None) -> dict[str, Any]:
    """others_share, slowdown and contended of a measurement's load window (all None: unknown)."""
    if load is None:
        return {"others_share": None, "slowdown": None, "contended": None}
    return {"others_share": round(load.others_share, 4), "slowdown": round(load.slowdown, 3),
            "contended": load.contended}


def cpu_contended(row: HistoryRun) -> bool | None:
    """Timed under contention, as a speed is corrected for it: a CPU row's flag; a GPU row's never (its CPU load is
    recorded, no slowdown applied); None: not measured."""
    if row.contended is None:
        return None
    return row.contended and (row.device or "cpu").lower() == "cpu"


def load_label(row: HistoryRun) -> str:
    """'contended ×3.1', '1 of 2 threads for others' load' (with ', measured ×1.8' where measured), 'idle', a GPU
    row's 'GPU; others 40% of CPUs', or '—' (not measured): the history table's load column."""
    contended = cpu_contended(row)
    if contended is None:
        return "—"
    measured = f", measured ×{row.measured_slowdown:.1f}" if row.measured_slowdown else ""
    if contended:
        return f"contended ×{row.slowdown or 1:.1f}{measured}"
    if row.adapted_from is not None and row.adapted_from != row.cpu_threads:
        return f"{row.cpu_threads} of {row.adapted_from} threads for others' load{measured}"
    gpu = (row.device or "cpu").lower() != "cpu"
    return f"GPU; others {row.others_share or 0:.0%} of CPUs" if gpu else "idle"


def training_memory_fields(t: TrainingConfig) -> dict[str, Any]:
    """The memory-relevant fields of a run's training config, as history rows record them."""
    return {"lora_targets": t.lora_targets_text, "gradient_checkpointing": t.gradient_checkpointing,
            "quantize": t.quantize or "none", "attention": t.attention,
            "modules_to_save": ",".join(sorted(t.modules_to_save)), "lora_dropout": t.lora_dropout}


def _tokens_per_microbatch(cfg: RunConfig, t: TrainingConfig) -> int | None:
    """The largest micro-batch's tokens: packed rows are max_seq_len long; unpacked ones are padded to the
    longest example, which the plan measured (run.yaml's estimate); unknown without it."""
    if t.packing:
        return t.batch_size * t.max_seq_len
    return (cfg.estimate.tokens_per_microbatch or None) if cfg.estimate else None
