"""The build cache's pruning (models/buildcache.py): a model's kept builds stay at its KEEP most recently used, a
copy from one marks its use, one that another builder holds stays, and other models' builds are never touched. Real
cache directories and locks; the builds are small directories (what they hold does not matter to the cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunelab.models import buildcache


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def _built(tmp_path: Path, tag: str) -> Path:
    out = tmp_path / f"build-{tag}"
    out.mkdir()
    (out / "model.safetensors").write_text(tag)
    (out / "config.json").write_text("{}")
    return out


def _complete(path: Path) -> bool:
    return (path / "model.safetensors").is_file()


def _store(tmp_path: Path, name: str, tag: str, when: float, said: list[str]) -> Path:
    """A build of `name` under the key `tag`, kept, its last use set to `when` (seconds since the epoch)."""
    entry = buildcache.entry_dir(name, {"transformers": tag})
    with buildcache.one_builder(entry):
        buildcache.store(_built(tmp_path, f"{name}-{tag}"), entry, said.append)
    os.utime(entry, (when, when))
    return entry


def test_a_models_builds_are_kept_to_its_most_recently_used(tmp_path, cache):
    said: list[str] = []
    old = [_store(tmp_path, "smollm2", tag, 1_000_000 + i * 1000, said) for i, tag in enumerate(("5.1", "5.2", "5.3"))]
    other = _store(tmp_path, "smollm2-1b", "5.1", 1_000, said)  # another model whose name starts alike
    assert said == [] and all(p.is_dir() for p in [*old, other])
    # the oldest one is copied now: its use is marked, so the second oldest is the least recently used
    into = tmp_path / "copy"
    into.mkdir()
    assert buildcache.fetch(old[0], into, _complete) and (into / "model.safetensors").read_text() == "smollm2-5.1"
    newest = _store(tmp_path, "smollm2", "5.4", 2_000_000_000, said)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in (old[0], old[2], newest, other))
    assert not old[1].exists() and not (cache / f".{old[1].name}.lock").exists()
    assert len(said) == 1 and str(old[1]) in said[0] and "3 most recently used" in said[0], said
    assert (cache / f".{old[0].name}.lock").exists()  # a kept build's lock file stays


def test_a_build_another_builder_holds_is_not_removed(tmp_path, cache):
    said: list[str] = []
    held = _store(tmp_path, "smollm2", "5.1", 1_000, said)
    kept = [_store(tmp_path, "smollm2", tag, 2_000 + i, said) for i, tag in enumerate(("5.2", "5.3"))]
    with buildcache.one_builder(held):  # another build or copy of it under way (its lock taken)
        newest = _store(tmp_path, "smollm2", "5.4", 3_000, said)
    assert all(p.is_dir() for p in [held, *kept, newest]) and said == []
    # released: the next store removes the least recently used, and only it
    assert buildcache.prune(newest, said.append) == [held] and not held.exists()
    assert all(p.is_dir() for p in [*kept, newest])
