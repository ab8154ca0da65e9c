"""The GPU kit's peer row (issue 52, item 6): the training comparison of benchmarks/peers.py on the GPU — tunelab
against torchtune on the same LoRA job (peerlib/job.py GPU_JOB: a random-init Llama-3.2-1B, bf16, micro-batch 8 of
passages up to 512 tokens, r16 on q_proj,v_proj), 2 repeats interleaved, each measured from outside (first step,
steady tokens/s counted one way for both, peak RSS, NVML's peak used GPU memory, final loss).

Run by gpu_truth.py after its training rows, in the time it kept back for this row (PEERS_S) when a peer's
interpreter is at hand: `--peer-python torchtune=PYTHON` (an environment made on the GPU machine, e.g. a venv with
the system's packages and the carried torchtune wheels: docs/benchmarks.md, "Measured on a GPU"), else
scripts/peer-env's .venv-peer-torchtune. Its output goes to DIR/peers.log, the rows to DIR/peers-<gpu>-<date>.json
and the comparison lines and table to DIR/peers-<gpu>-<date>.md; a row without a peer, or that does not fit, is
skipped with the reason. --cpu-smoke: the same path on the CPU, the tiny model, 80 words, one repeat, unscored.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
from pathlib import Path

from gpu_truth_eval import run_logged
from peerlib import registry

HERE = Path(__file__).resolve().parent
PEERS_S = 300.0  # two tools × two repeats of the GPU job: each ~30 s of start (a 1B model's load) and ~20 s of steps
SMOKE_S = 150.0
PEER = "torchtune"


def peer_python(named: dict[str, Path]) -> Path | None:
    """The peer's interpreter: the one named, else scripts/peer-env's when it was made; None when neither."""
    return registry.find(PEER, named.get(PEER)).python


def peers_row(out: Path, slug: str, visible: str | None, left_s: float, smoke: bool, model_dir: Path | None,
              named: dict[str, Path]) -> str:
    """Run the row if it can; one line saying what happened (the table's path, or why not)."""
    python = peer_python(named)
    if python is None and not smoke:
        return (f"peer row: skipped (no {PEER} interpreter: --peer-python {PEER}=PYTHON, or scripts/peer-env "
                f"{PEER})")
    expected = SMOKE_S if smoke else PEERS_S
    if left_s < expected:
        return f"peer row: not started (expected {expected:.0f} s, {left_s:.0f} s left)"
    work = out / "peers"
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, str(HERE / "peers.py"), "--out", str(work), "--parts", "training",
           "--tools", f"tunelab,{PEER}", *([f"--peer-python={PEER}={python}"] if python else [])]
    if smoke:
        cmd += ["--device", "cpu", "--models", "tiny", "--words", "80", "--repeats", "1", "--threads", "1", "--no-score",
                "--caches", "caller"]  # a smoke: no cold start (tunelab's scaffold would time the shape afresh)
    else:
        cmd += ["--device", "cuda", "--repeats", "2", "--threads", str(min(8, os.cpu_count() or 1)),
                *(["--model-dir", str(model_dir)] if model_dir is not None else [])]
    log = out / "peers.log"
    code = run_logged(cmd, {}, visible, log, left_s)
    if code is None:
        return f"peer row: stopped at the budget; {log}"
    stem = out / f"peers-{slug}-{datetime.date.today().isoformat()}"
    if (work / "peers.json").is_file():
        shutil.copyfile(work / "peers.json", stem.with_suffix(".json"))
    lines = [line for line in log.read_text().splitlines(keepends=True)
             if line.startswith("|") or " ÷ " in line or "could not run" in line]
    stem.with_suffix(".md").write_text("".join(lines))
    return f"peer row: exit {code}; {stem.with_suffix('.md')}"
