"""Known, harmless warnings of pinned libraries, silenced narrowly so real ones stay visible."""

from __future__ import annotations

import warnings


def quiet_known_library_warnings() -> None:
    """Installed by every tunelab process at its start (cli/main.py, the job's runner): no tunelab code reads
    these deprecated names (it uses the current ones); the libraries below do, inside their own code."""
    # peft 0.21 (every model wrap: PeftModel.from_pretrained in evaluation) and trl 0.16 read transformers 5's
    # deprecated `is_gradient_checkpointing`; its current name is `is_activation_checkpointing`.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # inspect-ai 0.3.285 passes a deprecated argument to tenacity.
    warnings.filterwarnings("ignore", message=r"The 'initial' parameter is deprecated", category=DeprecationWarning)


def library_versions() -> dict[str, str]:
    """The versions a training step's memory and speed depend on (cache keys, probe results)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft", "trl")}


def quiet_hf_progress_bars() -> None:
    """transformers' per-shard progress bars garble our own progress display."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
