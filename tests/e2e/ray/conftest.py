"""The session's Ray cluster (tests/raycluster.py): a head and a second node, each in a network namespace of its
own, started once by the first test that needs it and stopped, by pid, at the session's end. Every file naming
`ray_cluster` runs in one xdist unit (tests/conftest.py SHARED_FIXTURES), so one worker holds the one cluster."""

from __future__ import annotations

import pytest
import raycluster


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
    yield cluster
    if started:
        cluster.stop()
