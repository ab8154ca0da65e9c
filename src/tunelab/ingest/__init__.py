"""ingest: import runs tunelab did not produce (torchtune / SLURM logs) into the history ledger."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab import history
from tunelab.catalog import resolve_architecture
from tunelab.errors import TunelabError
from tunelab.ingest.torchtune import LogParseError, ParsedRun, parse_torchtune_log

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
        peak_memory_gib=run.peak_memory_gib.get("allocated"),
        memory_kind="cuda_max_allocated" if run.peak_memory_gib else None,
        steps=run.steps,
        duration_s=round(run.steps / run.steps_per_s, 1) if run.steps_per_s else None,
        overhead_s=sum(run.checkpoint_seconds) or None,
        recorded_at=history.now_iso(),
    )


def ingest_logs(paths: list[Path], device: str | None = None) -> list[IngestResult]:
    """Parse every log; import the complete ones into the history ledger; report the rest with why."""
    results, rows = [], []
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
