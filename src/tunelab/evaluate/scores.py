"""An evaluation's samples read back from its inspect-ai log, and metric values made JSON-safe. The
scores.json record itself is the run directory's (tunelab.rundir.scores, re-exported here)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from tunelab.rundir.layout import EVAL_DIR, SCORES_FILE
from tunelab.rundir.scores import TaskScores, is_scored, read_scores, read_task_scores, task_dir, write_scores

__all__ = ["EVAL_DIR", "SCORES_FILE", "TaskScores", "is_scored", "read_scores", "read_task_scores", "task_dir",
           "write_scores", "finite_or_none", "SampleRow", "load_samples", "scored_samples"]


def finite_or_none(value: Any) -> float | None:
    """A metric value for JSON: NaN/inf (undefined on these samples) become null."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class SampleRow(NamedTuple):
    id: int | str
    input: str
    target: str
    completion: str
    value: Any  # the first scorer's value for this sample
    metadata: dict[str, Any]  # that score's metadata (e.g. option probabilities, parsed number)


def load_samples(log_path: str | Path, n: int | None = None) -> list[SampleRow]:
    """The first n samples of an .eval log, by sample id."""
    from inspect_ai.log import read_eval_log

    log = read_eval_log(str(log_path))
    samples = sorted(log.samples or [], key=lambda s: (str(type(s.id)), s.id, s.epoch))
    rows = []
    for s in samples[:n] if n is not None else samples:
        first = next(iter(s.scores.values())) if s.scores else None
        target = s.target if isinstance(s.target, str) else ", ".join(s.target)
        text = s.input if isinstance(s.input, str) else "\n".join(m.text for m in s.input)
        rows.append(SampleRow(s.id, text, target, s.output.completion, first.value if first else None,
                              dict(first.metadata or {}) if first else {}))
    return rows


def scored_samples(log_path: str | Path) -> list[Any]:
    """A finished log's samples as scores.json reads them, by sample id.

    From the sample summaries where they hold all of it (reading the samples validates every event: slow). A summary is
    thinned, so the samples are read instead when a summary may have dropped what scores.json takes."""
    from inspect_ai.log import read_eval_log, read_eval_log_sample_summaries

    samples: list[Any] = read_eval_log_sample_summaries(str(log_path))
    if not all(_whole(s) for s in samples):
        samples = read_eval_log(str(log_path)).samples or []
    return sorted(samples, key=lambda s: (str(type(s.id)), s.id, s.epoch))


def _whole(summary: Any) -> bool:
    """Whether thinning left what scores.json reads of this summary as the sample has it: no images, and its first
    score's metadata of numbers, or of lists and dicts (kept whole, or replaced by a string when over 1k)."""
    if (summary.metadata or {}).get("images"):
        return False
    first = next(iter(summary.scores.values())) if summary.scores else None
    return first is None or all(not isinstance(v, str) for v in (first.metadata or {}).values())
