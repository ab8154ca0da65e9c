"""host/ahead.py: a timing waits for every process importing ahead, and no longer than it is told."""

from __future__ import annotations

import threading
import time

from tunelab.host import ahead


def test_settle_returns_only_once_every_process_importing_ahead_is_ready():
    first, second = threading.Event(), threading.Event()
    ahead.importing(first)
    ahead.importing(second)
    order: list[str] = []

    def ready_later() -> None:
        time.sleep(0.1)
        order.append("first ready")
        first.set()
        time.sleep(0.1)
        order.append("second ready")
        second.set()

    threading.Thread(target=ready_later).start()
    ahead.settle(30)
    order.append("settled")
    assert order == ["first ready", "second ready", "settled"]
    assert first not in ahead._IMPORTING and second not in ahead._IMPORTING  # kept no longer than needed


def test_settle_gives_up_after_its_timeout_and_keeps_waiting_for_the_rest_next_time():
    never = threading.Event()
    ahead.importing(never)
    ahead.settle(0.05)
    assert not never.is_set() and never in ahead._IMPORTING  # a later timing waits for it again
    never.set()
    ahead.settle(0.05)
    assert never not in ahead._IMPORTING
