"""Combinations searched side by side (tune/search.py): each on a lane of its own at a time, never more at once
than lanes, every result yielded, and a stop (Ctrl-C in the main thread, or a lane's error) reaching every lane;
the plan prices the search over the same lanes (forecast/searchline.py), worked out by hand."""

import threading
import time

import pytest

from tunelab.forecast.searchline import _summed
from tunelab.forecast.tunecost import SearchCost
from tunelab.tune.search import Combination, side_by_side
from tunelab.tune.trial import Lane


def _combos(n: int) -> list[Combination]:
    return [Combination(name=f"c{i}", levels={}, runs=(), steps=10) for i in range(n)]


def _lanes(n: int) -> list[Lane]:
    stopping = threading.Event()
    return [Lane({"TUNELAB_CPUS": str(i)}, stopping) for i in range(n)]


def test_each_combination_runs_on_a_free_lane_never_more_at_once_than_lanes():
    held: dict[str, str] = {}  # lane -> combination on it now
    most = [0]
    lock = threading.Lock()

    def work(combo: Combination, lane: Lane) -> str:
        share = lane.env["TUNELAB_CPUS"]
        with lock:
            assert share not in held, (share, held)  # a lane holds one combination at a time
            held[share] = combo.name
            most[0] = max(most[0], len(held))
        time.sleep(0.05)
        with lock:
            del held[share]
        return f"{combo.name}@{share}"

    got: dict[str, str] = {}
    side_by_side(_combos(5), _lanes(2), work, lambda combo, result: got.update({combo.name: result}))
    assert sorted(got) == ["c0", "c1", "c2", "c3", "c4"]
    assert all(r.startswith(name + "@") for name, r in got.items()) and most[0] <= 2


def test_a_stop_in_the_main_thread_reaches_every_lane():
    lanes = _lanes(2)
    started = threading.Barrier(2, timeout=10)

    def work(combo: Combination, lane: Lane) -> str:
        if combo.name == "c0":
            return "quick"
        started.wait()  # c1 runs until told to stop, as a trial follows its job
        while not lane.stopping.is_set():
            time.sleep(0.01)
        raise KeyboardInterrupt

    def slow_first(combo: Combination, lane: Lane) -> str:
        if combo.name == "c0":
            started.wait()
        return work(combo, lane)

    def interrupted(combo: Combination, result: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the main thread handles the first result

    with pytest.raises(KeyboardInterrupt):
        side_by_side(_combos(2), lanes, slow_first, interrupted)
    assert all(lane.stopping.is_set() for lane in lanes)


def test_an_error_on_one_lane_stops_the_others_and_is_raised():
    lanes = _lanes(2)

    def work(combo: Combination, lane: Lane) -> str:
        if combo.name == "c0":
            raise RuntimeError("no rate")
        while not lane.stopping.is_set():
            time.sleep(0.01)
        return "stopped"

    with pytest.raises(RuntimeError, match="no rate"):
        side_by_side(_combos(2), lanes, work, lambda combo, result: None)
    assert lanes[1].stopping.is_set()


def _cost(name: str, seconds: float) -> SearchCost:
    return SearchCost(combination=name, run=name, trials=4, budget=0.5, steps_per_trial=10, seconds=seconds,
                      source="injected")


def test_the_plan_places_the_combinations_over_the_lanes_longest_first():
    costs = [_cost("a", 10.0), _cost("b", 10.0), _cost("c", 30.0)]
    assert _summed(costs, 1)[1] == 50.0  # one after another
    assert _summed(costs, 2)[1] == 30.0  # c alone on one lane, a then b on the other: 20
    assert _summed(costs, 3)[1] == 30.0
