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
    env = {**os.environ, "TUNELAB_VLLM_PYTHON": python}
    if visible is None:
        env.pop("CUDA_VISIBLE_DEVICES", None)  # the kit hid the GPU from itself; the row needs it
    else:
        env["CUDA_VISIBLE_DEVICES"] = visible
    cmd = [sys.executable, str(HERE / "eval_engines.py"), "--out", str(out / "eval-engines"), "--vllm-python", python,
           *(["--smoke"] if smoke else [])]
    log = out / "eval-engines.log"
    try:
        with open(log, "w") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=left_s)
    except subprocess.TimeoutExpired:
        return f"evaluation row: stopped at the budget; {log}"
    table = out / f"eval-engines-{slug}-{datetime.date.today().isoformat()}.md"
    table.write_text("".join(line for line in log.read_text().splitlines(keepends=True)
                             if line.startswith(("|", "same answers", "vllm:")) or "targets," in line))
    return f"evaluation row: exit {done.returncode}; {table}"
