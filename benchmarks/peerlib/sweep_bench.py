"""The whole-sweep benchmark as one call (issue 66 item 1): the rows and model written, every tool's pipeline run
and measured, sweep.json and sweep.md rewritten after every row. `benchmarks/sweep_peers.py` runs it alone;
`benchmarks/peers.py` runs it first, so that its `sweep:` lines lead the component lines in one output."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from peerlib import registry, sweep_data, sweep_run, sweep_summary
from peerlib.measure import loadavg
from peerlib.sweep_peer import lmeval_ready
from peerlib.sweep_spec import SweepResult, SweepSpec
from peerlib.training import versions


def runnable(tools: list[str]) -> tuple[list[registry.Found], list[str]]:
    """The tools that can run their whole pipeline, and a line for each that cannot (no environment, or no
    lm-eval environment for a peer's evaluation)."""
    found, lines = [], []
    for name in tools:
        f = registry.find(name)
        why = f.why or ("" if name == "tunelab" else lmeval_ready())
        if why:
            lines.append(f"sweep: {name} could not run: {why}")
        else:
            found.append(f)
    return found, lines


def run(out: Path, tools: list[str], repeats: int, sizes: sweep_data.SweepData, sweep: SweepSpec,
        resume: bool = False) -> tuple[str, list[str]]:
    """The sweep of every tool in `tools`, `repeats` times interleaved, under `out`: its Markdown table and its closing
    lines (`sweep: tunelab ÷ PEER`, then one per tool that could not run or failed). `resume`: the rows already in
    out/sweep_rows.jsonl are kept and only the missing tool × repeat pairs run."""
    from tunelab.models.smollm2 import build_smollm2

    model_dir = out / "models" / "smollm2"
    build_smollm2(model_dir, dtype="float32")  # float32 on disk: every tool trains the same fp32 job
    inputs = sweep_data.write(out / "data", model_dir, sizes, sweep.max_seq_len)
    counts = sweep_data.lengths(inputs)
    print(f"[sweep] {out}; data seed {sizes.seed}: train {sweep_data.describe(counts, sweep.max_seq_len)} "
          f"(drawn rows over it dropped: {sweep_data.dropped(inputs)}); {sweep.threads} cores; load {loadavg()}",
          flush=True)
    found, missing = runnable(tools)
    known = versions(found)
    record = {"sweep": asdict(sweep), "data": asdict(sizes), "train_tokens": counts, "versions": known,
              "cores": os.cpu_count()}

    def write(rows: list[SweepResult]) -> tuple[str, list[str]]:
        """sweep.json and sweep.md from the rows so far (after every row: a run stopped early keeps its record)."""
        load = "; ".join(f"{r.tool} #{r.repeat + 1}: {r.load_before}" for r in rows)
        table = sweep_summary.table(rows, load)
        lines = sweep_summary.ratio_lines(rows) + missing + sweep_summary.failure_lines(rows)
        (out / "sweep.json").write_text(json.dumps({**record, "rows": [asdict(r) for r in rows], "lines": lines},
                                                   indent=1))
        (out / "sweep.md").write_text(table + "\n")
        return table, lines

    rows_file = out / "sweep_rows.jsonl"
    if not resume:
        rows_file.unlink(missing_ok=True)
    rows = sweep_run.compare(found, inputs, sweep, out / "runs", repeats, known,
                             sweep_data.mean_tokens(counts, sweep.max_seq_len), rows_file, after=write,
                             earlier=sweep_run.earlier_rows(rows_file))
    return write(rows)
