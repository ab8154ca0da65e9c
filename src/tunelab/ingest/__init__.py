"""ingest: import runs tunelab did not produce (torchtune / SLURM logs) into the history ledger."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.catalog import architecture_from_config, resolve_architecture
from tunelab.errors import TunelabError
from tunelab.ingest.hf_trainer import TrainerRun, find_trainer_dirs, parse_trainer_dir
from tunelab.ingest.torchtune import LogParseError, ParsedRun, parse_torchtune_log
from tunelab.ledger import history
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.status import now_iso

LOG_PATTERNS = ("*.out", "*.log")


@dataclass
class IngestResult:
    path: Path
    imported: bool
    reason: str


def find_logs(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted({f for pat in LOG_PATTERNS for f in p.rglob(pat)})
        elif p.is_file():
            files.append(p)
        else:
            raise TunelabError("no such file or directory", file=p)
    return files


def to_history(path: Path, run: ParsedRun, device: str | None) -> history.HistoryRun:
    arch = resolve_architecture(run.model) if run.model else None
    cfg = run.config
    tps = run.summary.get("tokens_per_second_per_gpu")
    peak, kind = run.training_peak()
    return history.HistoryRun(
        key=str(path.resolve()),
        source="torchtune-log",
        experiment=path.parent.name,
        run=path.stem,
        model=run.model,
        layers=arch.layers if arch else None,
        hidden=arch.hidden if arch else None,
        parameters=arch.parameters if arch else None,
        device=device,
        packed=run.packed,
        batch_size=cfg.get("batch_size"),
        gradient_accumulation_steps=cfg.get("gradient_accumulation_steps"),
        max_seq_len=(cfg.get("tokenizer") or {}).get("max_seq_len") if isinstance(cfg.get("tokenizer"), dict) else None,
        lora_rank=cfg.get("lora_rank") or ((cfg.get("model") or {}).get("lora_rank") if isinstance(cfg.get("model"), dict) else None),
        # torchtune's figure counts label tokens of the last step only; steps/s is the steady mean
        tokens_per_step=round(tps / run.steps_per_s, 2) if tps and run.steps_per_s else None,
        tokens_per_s=tps,
        steps_per_s=run.steps_per_s,
        peak_memory_gib=peak,
        memory_kind=kind,
        steps=run.steps,
        duration_s=round(run.steps / run.steps_per_s, 1) if run.steps_per_s else None,
        overhead_s=sum(run.checkpoint_seconds) or None,
        recorded_at=now_iso(),
        **_torchtune_facts(run, cfg, path),
    )


def _torchtune_facts(run: ParsedRun, cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """What memory and speed depend on, and the final losses, from a torchtune config echo and summary."""
    model: dict[str, Any] = cfg["model"] if isinstance(cfg.get("model"), dict) else {}
    targets = list(model.get("lora_attn_modules") or [])
    if model.get("apply_lora_to_mlp"):
        targets += ["gate_proj", "up_proj", "down_proj"]
    if model.get("apply_lora_to_output"):
        targets.append("output")
    seq = (cfg.get("tokenizer") or {}).get("max_seq_len") if isinstance(cfg.get("tokenizer"), dict) else None
    batch = cfg.get("batch_size")
    facts = {
        "origin": "ingested", "origin_where": str(path.resolve()),
        "final_loss": run.summary.get("loss", run.losses[-1] if run.losses else None),
        "final_val_loss": run.summary.get("val_loss"),
        "epochs": cfg.get("epochs"),
        "lora_targets": ",".join(targets) or None,
        "dtype": {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}.get(str(cfg.get("dtype")), cfg.get("dtype")),
        "gradient_checkpointing": cfg.get("enable_activation_checkpointing"),
        # packed rows are max_seq_len long: the largest micro-batch's tokens; unpacked ones depend on the data
        "max_tokens_per_microbatch": batch * seq if run.packed and batch and seq else None,
    }
    return {**facts, "missing": missing_fields({**facts, "peak_memory_gib": run.training_peak()[0],
                                                "tokens_per_s": run.summary.get("tokens_per_second_per_gpu"),
                                                "max_seq_len": seq, "batch_size": batch,
                                                "lora_rank": model.get("lora_rank") or cfg.get("lora_rank")})}


def missing_fields(values: dict) -> str | None:
    """The history fields a source did not give, comma-separated (None when it gave them all)."""
    wanted = ("peak_memory_gib", "tokens_per_s", "final_loss", "final_val_loss", "epochs", "max_seq_len",
              "batch_size", "lora_rank", "lora_targets", "dtype", "gradient_checkpointing",
              "max_tokens_per_microbatch")
    gone = [k for k in wanted if k in values and values[k] is None]
    return ",".join(gone) or None


def trainer_dir_to_history(run: TrainerRun, device: str | None) -> history.HistoryRun:
    """A history row from an HF Trainer output dir; the model from its config.json, else the adapter's base."""
    ad = run.adapter
    base = ad.get("base_model_name_or_path")
    arch = None
    if run.model_config:
        arch = architecture_from_config(run.model_config, run.root.name)
    elif base:
        try:
            arch = resolve_architecture(base)
        except TunelabError:
            arch = None
    targets = ad.get("target_modules")
    facts: dict[str, Any] = {
        "final_loss": run.losses[-1][1], "final_val_loss": run.val_losses[-1][1] if run.val_losses else None,
        "epochs": run.epochs, "lora_targets": ",".join(sorted(targets)) if isinstance(targets, list) else targets,
        "peak_memory_gib": run.peak_memory_gib, "tokens_per_s": run.tokens_per_s, "batch_size": run.batch_size,
        "lora_rank": ad.get("r"), "max_seq_len": None, "dtype": None, "gradient_checkpointing": None,
        "max_tokens_per_microbatch": None,
    }
    return history.HistoryRun(
        key=str(run.root.resolve()), source="hf-trainer", origin="ingested", origin_where=str(run.state_path),
        experiment=run.root.parent.name, run=run.root.name, model=base or (arch.name if arch else None),
        layers=arch.layers if arch else None, hidden=arch.hidden if arch else None,
        parameters=arch.parameters if arch else None, device=device, gradient_accumulation_steps=None,
        tokens_per_step=round(run.tokens / run.steps, 2) if run.tokens and run.steps else None,
        steps_per_s=round(run.steps / run.runtime_s, 4) if run.runtime_s else None,
        memory_kind=MemoryKind.CUDA_MAX_ALLOCATED if run.peak_memory_gib else None, steps=run.steps,
        duration_s=run.runtime_s, recorded_at=now_iso(), missing=missing_fields(facts),
        **{k: v for k, v in facts.items() if k in history.HistoryRun.__dataclass_fields__})


def ingest_logs(paths: list[Path], device: str | None = None) -> list[IngestResult]:
    """Import every complete log and HF Trainer output dir into the history; report the rest with why."""
    results, rows = [], []
    for root in find_trainer_dirs([p for p in paths if p.is_dir()]):
        try:
            run = parse_trainer_dir(root)
            rows.append(trainer_dir_to_history(run, device))
        except LogParseError as exc:
            results.append(IngestResult(root, False, str(exc)))
            continue
        results.append(IngestResult(root, True, f"HF Trainer dir, {run.steps} steps, final loss {run.losses[-1][1]:g}"))
    for f in find_logs(paths):
        try:
            parsed = parse_torchtune_log(f.read_text(encoding="utf-8", errors="replace"))
            row = to_history(f, parsed, device)
        except (LogParseError, TunelabError) as exc:
            results.append(IngestResult(f, False, str(exc)))
            continue
        rows.append(row)
        results.append(IngestResult(f, True, f"{parsed.model or 'unknown model'}, {parsed.steps} steps, "
                                             f"{parsed.steps_per_s or '?'} it/s"))
    history.record(rows)
    return results
