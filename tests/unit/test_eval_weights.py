"""Releasing an evaluation's cached weights frees them, and pays for a full garbage collection only when
something still holds them (a reference cycle): a long-lived process's collection costs ~0.5 s."""

from __future__ import annotations

import gc
import weakref

import pytest

from tunelab.evaluate import hf


@pytest.fixture
def full_collections():
    """The number of generation-2 collections asked for while the test runs. The collector's own automatic runs are
    switched off meanwhile: loading a model allocates enough to start one at any point (a fresh-clone CI run counted
    one), and that one is the interpreter's, not the code's under test."""
    seen: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            seen.append(1)

    enabled = gc.isenabled()
    gc.disable()  # gc.collect() still runs, and is still counted
    gc.callbacks.append(count)
    try:
        yield seen
    finally:
        gc.callbacks.remove(count)
        if enabled:
            gc.enable()


def test_released_weights_are_freed_without_a_collection(tiny_model, full_collections):
    lm = hf.local_lm(tiny_model, None, "float32", "cpu")
    model = weakref.ref(lm.model)
    assert hf.local_lm(tiny_model, None, "float32", "cpu") is lm  # cached: the second call loads nothing
    del lm
    hf.release_weights()
    assert model() is None and full_collections == []
    hf.release_weights()  # nothing cached: nothing to do
    assert full_collections == []


def test_weights_held_in_a_cycle_are_collected(tiny_model, full_collections):
    lm = hf.local_lm(tiny_model, None, "float32", "cpu")
    lm.model.held_by = [lm.model]  # a reference cycle: refcounting alone never frees it
    model = weakref.ref(lm.model)
    del lm
    hf.release_weights()
    assert model() is None and len(full_collections) == 1


def test_loading_other_weights_releases_the_cached_ones(tiny_model, full_collections):
    first = weakref.ref(hf.local_lm(tiny_model, None, "float32", "cpu").model)
    second = hf.local_lm(tiny_model, None, "bfloat16", "cpu")
    assert first() is None and second.model.dtype.is_floating_point and full_collections == []
    hf.release_weights()
