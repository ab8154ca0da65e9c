"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """(experiment dir, adapter dir): one LoRA adapter overfit on evalkit.WORDS (capitalization)."""
    from evalkit import make_cfg, train_adapter

    root = tmp_path_factory.mktemp("evalexp")
    return root, train_adapter(make_cfg(root, tiny_model), root / "adapter")
