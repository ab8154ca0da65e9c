"""benchmarks/forking.py's script runner, which the benchmark smoke tests rely on to fail when a smoke fails: a
forked `python SCRIPT ARGS` exits as the interpreter would (an exception: 1 and its traceback; sys.exit(n): n),
its output in its own files, a child past its timeout killed with its own children, two at a time."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import forking  # noqa: E402

SCRIPT = """import logging, os, sys, time
print("argv", sys.argv[1:], os.getcwd(), __name__, os.environ["WHO"], sys.path[0] == os.path.dirname(__file__))
logging.getLogger("tunelab.x").warning("logged")
if sys.argv[1] == "raise":
    raise ValueError("boom")
if sys.argv[1] == "sleep":
    pid = os.fork()  # a grandchild, which the timeout must kill too
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    with open(sys.argv[2], "w") as f:
        f.write(str(pid))
    time.sleep(60)
sys.exit(int(sys.argv[1]))
"""


def run(tmp_path: Path, *cases: list[str], timeout: float = 600) -> dict[str, tuple[forking.Child, str, str]]:
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    forks = forking.Forks(parallel=2)
    for i, argv in enumerate(cases):
        forks.add(str(i), forking.run_python, [str(script), *argv], tmp_path, {**os.environ, "WHO": f"w{i}"},
                  out=tmp_path / f"{i}.out", err=tmp_path / f"{i}.err", timeout=timeout)
    results = {}
    for i, argv in enumerate(cases):
        child = forks.result(str(i))
        results[argv[0]] = (child, (tmp_path / f"{i}.out").read_text(), (tmp_path / f"{i}.err").read_text())
    forks.close()
    return results


def test_a_forked_script_exits_as_python_would_with_its_own_output(tmp_path):
    from inspect_ai._util.logger import init_logger

    init_logger(None)  # as an evaluation run earlier in this process leaves it: inspect-ai's handler on the root logger
    got = run(tmp_path, ["raise"], ["0"], ["3"])
    child, out, err = got["raise"]
    assert child.code == 1 and not child.timed_out
    assert out == f"argv ['raise'] {tmp_path} __main__ w0 True\n"
    assert "logged" in err and err.rstrip().endswith("ValueError: boom")  # the log line and the traceback
    assert got["0"][0].code == 0 and got["0"][1].startswith("argv ['0'] ") and " w1 " in got["0"][1]
    assert got["3"][0].code == 3


def _until(done, what: str, guard_s: float = 120.0) -> None:
    """Poll `done` until true; `guard_s` only keeps a broken case from hanging (it fails naming `what`)."""
    end = time.monotonic() + guard_s
    while not done():
        assert time.monotonic() < end, what
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    """Dead: gone, or a zombie not yet reaped (by init, once its parent is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_forked_script_past_its_timeout_is_killed_with_its_children(tmp_path):
    """A child's timeout sets its deadline; past it, the child is killed with its session (its grandchild too) and
    reads as timed out. The deadline is moved into the past here once the grandchild is forked (as Forks.close
    does), so that no clock races the script's start."""
    script, marker = tmp_path / "s.py", tmp_path / "grandchild"
    script.write_text(SCRIPT)
    before = time.monotonic()
    child = forking.start(forking.run_python, [str(script), "sleep", str(marker)], tmp_path,
                          {**os.environ, "WHO": "w0"}, out=tmp_path / "0.out", err=tmp_path / "0.err", timeout=600.0)
    assert before + 600.0 <= child.deadline <= time.monotonic() + 600.0  # its deadline: the timeout from its start
    _until(lambda: marker.is_file() and marker.read_text().strip(), "the script never forked its grandchild")
    grandchild = int(marker.read_text())
    assert not forking.poll(child) and not child.timed_out  # before its deadline: left running
    child.deadline = 0.0  # past
    assert forking.wait(child) is child and child.timed_out and child.code is None and child.done
    _until(lambda: _gone(grandchild), f"grandchild {grandchild} outlived the timeout")
