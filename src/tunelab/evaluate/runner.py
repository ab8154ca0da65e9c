"""Evaluate a run's checkpoints (or a control's base model) with inspect-ai; write scores.json.

Layout: <run_dir>/eval/<label>/ holds inspect's .eval log and scores.json, label = epoch_N | base.
scores.json is written atomically and last, so its presence means "this evaluation finished";
an interrupted evaluation leaves none and is simply redone next time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_json, read_json
from tunelab.runconfig import RunConfig
from tunelab.train.checkpoints import ADAPTER_FILES, complete_epochs, epoch_dir
from tunelab.train.status import CHECKPOINTS_DIR

EVAL_DIR = "eval"
SCORES_FILE = "scores.json"
METRIC = "accuracy"

EpochSelection = Literal["last", "all"] | list[int]


@dataclass(frozen=True)
class Target:
    """One thing to evaluate: a checkpoint epoch, or the base model (epoch None)."""

    label: str
    epoch: int | None
    adapter_path: Path | None


def select_targets(cfg: RunConfig, epochs: EpochSelection | None = None) -> list[Target]:
    """What to evaluate: the base model for a control; the chosen complete epochs otherwise."""
    if cfg.kind == "control":
        return [Target("base", None, None)]
    epochs = cfg.eval.epochs if epochs is None else epochs
    available = complete_epochs(cfg.run_dir)
    ckpt_root = cfg.run_dir / CHECKPOINTS_DIR
    if not available:
        raise TunelabError(
            "no complete checkpoint to evaluate (expected epoch_N/ with " + " and ".join(ADAPTER_FILES) + ")",
            file=ckpt_root,
        )
    if epochs == "last":
        chosen = [available[-1]]
    elif epochs == "all":
        chosen = available
    else:
        missing = [e for e in epochs if e not in available]
        if missing:
            raise TunelabError(
                f"no complete checkpoint for epoch(s) {missing}; complete: {list(available)}", file=ckpt_root
            )
        chosen = sorted(set(epochs))
    return [Target(f"epoch_{e}", e, epoch_dir(cfg.run_dir, e)) for e in chosen]


def evaluate_run(
    cfg: RunConfig, epochs: EpochSelection | None = None, force: bool = False, *, batch_size: int | None = None
) -> list[dict[str, Any]]:
    """Evaluate each target of a run; a label whose scores.json exists is skipped unless force.

    Returns the scores of every target (freshly computed or read back), in epoch order.
    `epochs` defaults to cfg.eval.epochs and is ignored for controls. batch_size: prompts decoded
    together (default provider.DEFAULT_BATCH_SIZE); 1 is the slow, unbatched reference path.
    """
    base = Path(cfg.model.path)
    if not (base / "config.json").is_file():
        raise TunelabError("base model directory not found (no config.json)", file=base)
    results = []
    for target in select_targets(cfg, epochs):
        out_dir = cfg.run_dir / EVAL_DIR / target.label
        existing = read_json(out_dir / SCORES_FILE) if not force else None
        if isinstance(existing, dict):
            results.append(existing)
            continue
        results.append(_evaluate_target(cfg, target, out_dir, batch_size))
    return results


def _evaluate_target(cfg: RunConfig, target: Target, out_dir: Path, batch_size: int | None) -> dict[str, Any]:
    import inspect_ai
    from inspect_ai.model import get_model

    from tunelab.evaluate.provider import DEFAULT_BATCH_SIZE, PROVIDER
    from tunelab.evaluate.tasks import build_task

    out_dir.mkdir(parents=True, exist_ok=True)
    # Old results of this label are void from here on: scores first, so a crash can't pair
    # stale scores with a new log.
    (out_dir / SCORES_FILE).unlink(missing_ok=True)
    for old in out_dir.glob("*.eval"):
        old.unlink()

    task = build_task(cfg)
    dtype = cfg.training.dtype if (cfg.kind == "finetune" and cfg.training is not None) else "auto"
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    started = time.monotonic()
    # memoize=False: a re-evaluation after retraining must load the new weights, not a cached model.
    model = get_model(
        f"{PROVIDER}/{cfg.name}/{target.label}",
        memoize=False,
        base_path=str(cfg.model.path),
        adapter_path=str(target.adapter_path) if target.adapter_path else None,
        prompt_template=cfg.prompt,
        chat_template=cfg.chat_template,
        system_prompt=cfg.system_prompt,
        dtype=dtype,
        batch_size=batch_size,
    )
    try:
        logs = inspect_ai.eval(
            task,
            model=model,
            log_dir=str(out_dir),
            log_format="eval",
            display="none",
            score_display=False,
            max_connections=2 * batch_size,
            max_samples=2 * batch_size,
            fail_on_error=True,
            metadata={"run": cfg.name, "kind": cfg.kind, "label": target.label, "epoch": target.epoch},
        )
    finally:
        model.api.close()
    log = logs[0]
    where = log.location or out_dir
    if log.status != "success":
        detail = log.error.message if log.error else log.status
        raise TunelabError(f"evaluation of {target.label} did not finish: {detail}", file=where)

    rows = load_samples(log.location)
    correct = sum(1 for r in rows if r.score >= 1.0)
    score = _metric(log)
    scores = {
        "run": cfg.name,
        "kind": cfg.kind,
        "label": target.label,
        "epoch": target.epoch,
        "task": cfg.eval.task,
        "split": cfg.eval.split,
        "metric": METRIC,
        "score": score if score is not None else (correct / len(rows) if rows else 0.0),
        "samples": len(rows),
        "correct": correct,
        "log": Path(log.location).name,
        "model_path": str(cfg.model.path),
        "adapter_path": str(target.adapter_path) if target.adapter_path else None,
        "max_tokens": cfg.eval.max_tokens,
        "duration_s": round(time.monotonic() - started, 3),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(out_dir / SCORES_FILE, scores)
    return scores


def _metric(log: Any) -> float | None:
    if log.results is None or not log.results.scores:
        return None
    metric = log.results.scores[0].metrics.get(METRIC)
    return float(metric.value) if metric is not None else None


def read_scores(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished evaluation of a run (scores.json contents), base first, then by epoch."""
    root = Path(run_dir) / EVAL_DIR
    found = []
    for path in sorted(root.glob(f"*/{SCORES_FILE}")):
        data = read_json(path)
        if isinstance(data, dict):
            found.append(data)
    return sorted(found, key=lambda s: (-1 if s.get("epoch") is None else s["epoch"], str(s.get("label"))))


class SampleRow(NamedTuple):
    input: str
    target: str
    completion: str
    score: float


def load_samples(log_path: str | Path, n: int | None = None) -> list[SampleRow]:
    """(input, target, completion, score) of the first n samples of an .eval log, by sample id."""
    from inspect_ai.log import read_eval_log
    from inspect_ai.scorer import value_to_float

    log = read_eval_log(str(log_path))
    to_float = value_to_float()
    samples = sorted(log.samples or [], key=lambda s: (s.id if isinstance(s.id, int) else str(s.id), s.epoch))
    rows = []
    for s in samples[:n] if n is not None else samples:
        value = next(iter(s.scores.values())).value if s.scores else 0
        target = s.target if isinstance(s.target, str) else ", ".join(s.target)
        text = s.input if isinstance(s.input, str) else " ".join(m.text for m in s.input)
        rows.append(SampleRow(text, target, s.output.completion, to_float(value)))
    return rows
