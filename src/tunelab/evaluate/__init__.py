"""Evaluation with inspect-ai: fine-tuned checkpoints and control base models, same prompt as training.

Importing this package registers the `tunelab` model provider with inspect, so `evaluate_run`
works in-process with no entry point.
"""

from tunelab.compat import quiet_known_library_warnings
from tunelab.evaluate import provider as _provider  # noqa: F401  (registers the `tunelab` provider)
from tunelab.evaluate.runner import SampleRow, evaluate_run, load_samples, read_scores

quiet_known_library_warnings()

__all__ = ["SampleRow", "evaluate_run", "load_samples", "read_scores"]
