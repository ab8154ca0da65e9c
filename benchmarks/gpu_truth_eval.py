"""The GPU kit's evaluation row: HF against vLLM on the same adapters (benchmarks/eval_engines.py), on the GPU.

Run after the training rows, in the budget that is left, when a vLLM is at hand: vllm importable by this
interpreter (`pip install 'tunelab[vllm]'`), or $TUNELAB_VLLM_PYTHON naming an environment that has it. Its table
goes to DIR/eval-engines-<gpu>-<date>.md beside the kit's JSON, its output to DIR/eval-engines.log; a row that does
not fit in the budget, or has no vLLM, is skipped with the reason. The training rows' file is not touched.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

EXPECTED_S = 300.0  # SmolLM2, 4 runs × 2 epochs + the control, both engines, the server's start included
HERE = Path(__file__).resolve().parent


def run_logged(cmd: list[str], extra_env: dict[str, str], visible: str | None, log: Path, left_s: float) -> int | None:
    """A row's command after the training rows, with the GPU the kit hid from itself visible again, its output in
    `log`; its exit code, None when stopped at the budget (`left_s`)."""
    env = {**os.environ, **extra_env}
    if visible is None:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        env["CUDA_VISIBLE_DEVICES"] = visible
    try:
        with open(log, "w") as f:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=left_s).returncode
    except subprocess.TimeoutExpired:
        return None


def vllm_python() -> str | None:
    named = os.environ.get("TUNELAB_VLLM_PYTHON")
    if named:
        return named
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


def eval_row(out: Path, slug: str, visible: str | None, left_s: float, smoke: bool) -> str:
    """Run the row if it can; one line saying what happened (the table's path, or why not)."""
    python = vllm_python()
    if python is None:
        return "evaluation row: skipped (no vLLM: pip install 'tunelab[vllm]', or TUNELAB_VLLM_PYTHON)"
    expected = 120.0 if smoke else EXPECTED_S
    if left_s < expected:
        return f"evaluation row: not started (expected {expected:.0f} s, {left_s:.0f} s left)"
    cmd = [sys.executable, str(HERE / "eval_engines.py"), "--out", str(out / "eval-engines"), "--vllm-python", python,
           *(["--smoke"] if smoke else [])]
    log = out / "eval-engines.log"
    code = run_logged(cmd, {"TUNELAB_VLLM_PYTHON": python}, visible, log, left_s)
    if code is None:
        return f"evaluation row: stopped at the budget; {log}"
    table = out / f"eval-engines-{slug}-{datetime.date.today().isoformat()}.md"
    table.write_text("".join(line for line in log.read_text().splitlines(keepends=True)
                             if line.startswith(("|", "same answers", "vllm:")) or "targets," in line))
    return f"evaluation row: exit {code}; {table}"
