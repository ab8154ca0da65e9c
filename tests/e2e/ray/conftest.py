"""The Ray tests' cluster (tests/raycluster.py): a head and a second node, each in a network namespace of its own,
started once by the first test that needs it and stopped, by pid, as soon as the worker's next test needs it no
more (an idle cluster holds ~2 GiB and its daemons' CPU while the worker runs every other test), else at the
session's end. Every file naming `ray_cluster` runs in one xdist unit (tests/conftest.py SHARED_FIXTURES), so one
worker holds the one cluster and runs its tests one after the other."""

from __future__ import annotations

import pytest
import raycluster

_STARTED: list[raycluster.RayCluster] = []  # the cluster this process started and has not stopped yet


def _stop_started() -> None:
    while _STARTED:
        _STARTED.pop().stop()


@pytest.fixture(scope="session")
def ray_cluster():
    why = raycluster.why_not()
    if why is not None:
        pytest.skip(why)
    try:
        cluster, started = raycluster.start_cluster()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    print(f"\nRay cluster {f'up in {cluster.start_s:.1f} s' if started else 'found running'} at {cluster.address}")
    if started:
        _STARTED.append(cluster)
    yield cluster
    _stop_started()


def pytest_runtest_teardown(item, nextitem):
    """After a test of this directory: when the worker's next test (xdist holds it back until it is known) does not
    use the cluster, stop it now. A later test that asks for it again would find the fixture's cached value, so
    this only stops early when no test after it in this worker's queue names the fixture."""
    if _STARTED and (nextitem is None or "ray_cluster" not in nextitem.fixturenames):
        remaining = item.session.items[item.session.items.index(item) + 1:]
        if not any("ray_cluster" in later.fixturenames for later in remaining):
            _stop_started()
