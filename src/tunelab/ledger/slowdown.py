"""How much slower a run went than alone, measured from its own steps: a run timed beside other work is set beside the
uncontended rows of its shape on the same CPU, their median speed over its own the slowdown. The load's share of the
cores is only a lower bound (OpenMP threads lose more at barriers); this is what was suffered."""

from __future__ import annotations

from statistics import median

from tunelab.ledger.history import HistoryRun, cpu_contended

SHAPE = ("layers", "hidden", "parameters", "packed", "batch_size", "gradient_accumulation_steps", "max_seq_len",
         "lora_rank", "lora_targets", "gradient_checkpointing", "processes")


def loaded(row: HistoryRun) -> bool:
    """Timed beside others' work: contended, or started with fewer threads than planned for their load."""
    return bool(cpu_contended(row)) or (row.adapted_from is not None and row.adapted_from != row.cpu_threads)


def same_shape(a: HistoryRun, b: HistoryRun) -> bool:
    """Every field speed depends on, recorded alike (unrecorded is a difference here: a ratio needs like with like)."""
    return all(getattr(a, f) is not None and getattr(a, f) == getattr(b, f) for f in SHAPE)


def idle_alike(row: HistoryRun, history: list[HistoryRun]) -> list[HistoryRun]:
    """The uncontended rows of the row's shape on a CPU at the threads its rule planned, with a speed."""
    planned = row.adapted_from or row.cpu_threads
    return [r for r in history if r.key != row.key and (r.device or "").lower() == "cpu" and r.tokens_per_s
            and r.cpu_threads == planned and r.contended is False and not loaded(r) and same_shape(r, row)]


def measured_slowdown(row: HistoryRun, history: list[HistoryRun]) -> float | None:
    """The idle rows' median tokens/s over the row's (≥ 1 means slower); None: not loaded, or nothing to compare."""
    if not loaded(row) or not row.tokens_per_s or (row.device or "").lower() != "cpu":
        return None
    idle = idle_alike(row, history)
    if not idle:
        return None
    return round(median(r.tokens_per_s or 0.0 for r in idle) / row.tokens_per_s, 3)
