"""train/warm.py's requests: a request that names no module of MODULES, or carries an environment that is not names and
values, is refused with one error line and forks nothing."""

from __future__ import annotations

import json
import os

import pytest

from tunelab.train import warm


@pytest.mark.parametrize(("request_", "why"), [
    ({"module": "os", "argv": [], "log": "x", "environ": {}}, "'os' is not one of ['tunelab.train.loop_cost']"),
    ({"module": "tunelab.train.loop_cost", "argv": ["a", 1], "log": "x", "environ": {}}, "argv is ['a', 1]"),
    ({"module": "tunelab.train.loop_cost", "argv": [], "log": "x", "environ": {"A": None}}, "environ is {'A': None}"),
    ({"module": "tunelab.train.loop_cost", "argv": [], "log": "x"}, "environ is None"),
    ({"run_yaml": "r", "log": "x", "env": {"A": 1}}, "env is {'A': 1}"),
    ({"argv": []}, "'log'"),
])
def test_a_bad_request_gets_one_error_and_no_fork(request_, why):
    read, write = os.pipe()
    try:
        server = warm.Warm(-1, write)
        server.handle(json.dumps(request_).encode())
        reply = json.loads(os.read(read, 65536).decode().splitlines()[0])
        assert list(reply) == ["error"] and reply["error"].startswith(f"not a request: {why}"), reply
        assert not server.children
    finally:
        os.close(read)
        os.close(write)
