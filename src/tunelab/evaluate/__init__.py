"""Evaluation with inspect-ai: every task of a run's eval spec on its targets, prompts formatted exactly as in training.
Kept light to import (the ledger reads scores.json through it): inspect-ai and torch load only when an evaluation
runs."""

from __future__ import annotations

from typing import Any

from tunelab.evaluate.inspect_internals import EVAL_CALL_IMPORTS

_LAZY = {
    "evaluate_run": "tunelab.evaluate.runner",
    "check_tasks": "tunelab.evaluate.usertasks",
    "SampleRow": "tunelab.evaluate.scores",
    "TaskScores": "tunelab.evaluate.scores",
    "load_samples": "tunelab.evaluate.scores",
    "read_scores": "tunelab.evaluate.scores",
}
__all__ = sorted(_LAZY)
# What an evaluation imports, imported by a process's first evaluation (runner.evaluate_task, passes.evaluate_runs:
# `tunelab eval`, a node job, the demo, the MCP server) with the garbage collector paused (tunelab/host/startup.py); a `tunelab eval` with
# every score already there imports none of it.
EVALUATION_STACK = ("torch", "transformers", "peft", "inspect_ai", "inspect_ai.model", *EVAL_CALL_IMPORTS,
                    "statsmodels.stats.proportion", "tunelab.evaluate.provider")


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tunelab.evaluate' has no attribute {name!r}")
    import importlib

    if _LAZY[name] != "tunelab.evaluate.scores":
        from tunelab.compat import quiet_known_library_warnings

        quiet_known_library_warnings()
        importlib.import_module("tunelab.evaluate.provider")  # registers the provider
    return getattr(importlib.import_module(_LAZY[name]), name)
