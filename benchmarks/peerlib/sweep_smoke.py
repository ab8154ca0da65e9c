"""The whole-sweep benchmark's smoke (issue 66 item 1): tunelab's pipeline for real on the tiny model at a tiny size
(one run and the base; the caller's caches, so it checks the mechanics, never a figure), then every peer's committed
real output (COMMITTED: a real run's phase logs, configs, metric files and lm-eval results) read again by the same
parsers the benchmark uses, each figure checked against the record committed beside it, and the record's closing
lines made again from its rows."""

from __future__ import annotations

import json
from pathlib import Path

from peerlib import lmeval, registry, sweep_data, sweep_run, sweep_summary
from peerlib.measure import Line, Measured
from peerlib.sweep_spec import SweepResult, SweepSpec

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMITTED = RESULTS / "sweep-peers-2026-11-27"
SMOKE_DATA = sweep_data.SweepData(train=16, validation=4, test=4, seed=0)
SMOKE_SWEEP = SweepSpec(ranks=(8,), learning_rates=(2e-3,), max_seq_len=256, threads=1)


def log_measured(log: Path) -> Measured:
    """A committed phase log as its run's Measured (times are line numbers: parsing is checked, never speed)."""
    lines = [Line(float(i), text) for i, text in enumerate(log.read_text().splitlines())]
    return Measured(command=[str(log)], returncode=0, wall_s=float(len(lines)), peak_pss_mib=0.0, lines=lines)


def reparse(tool: str, row: SweepResult, where: Path) -> str:
    """One committed peer repeat read again: each run's last loss from its training phase's log (the tool's parser),
    every target's exact match from lm-eval's results files; SystemExit where one differs from the record."""
    peer = registry.find(tool).peer
    if peer is None:
        raise SystemExit(f"{tool}: its benchmark module does not import")
    logs = {name: where / f"phase{i}.log" for i, name in enumerate(row.phases)}
    accuracy = lmeval.parse_accuracy(where / "eval")
    for o in row.outcomes:
        if o.rank is not None:
            losses = peer.parse(log_measured(logs[f"train {o.name}"]), where / "runs" / o.name).losses
            if not losses or losses[-1] != o.final_loss:
                raise SystemExit(f"{tool} {o.name}: its log's last loss {losses[-1:]} != the record's {o.final_loss}")
        if accuracy.get(o.name) != o.accuracy:
            raise SystemExit(f"{tool} {o.name}: lm-eval's results say {accuracy.get(o.name)}, the record {o.accuracy}")
    final = ", ".join(f"{o.name} {o.final_loss}" for o in row.outcomes if o.rank is not None)
    scores = ", ".join(f"{o.name} {o.accuracy}" for o in row.outcomes)
    return (f"{tool}: committed output parsed: {sum(o.rank is not None for o in row.outcomes)} runs, final loss "
            f"{final}; exact match {scores}; as recorded")


def committed_lines() -> list[str]:
    """Every committed peer repeat read again, then the record's closing lines made again from its rows."""
    if not (COMMITTED / "sweep.json").is_file():
        return [f"committed: no peer output committed at {COMMITTED}"]
    record = json.loads((COMMITTED / "sweep.json").read_text())
    rows = [sweep_run.result_of(r) for r in record["rows"]]
    lines = [reparse(r.tool, r, COMMITTED / r.tool / str(r.repeat))
             for r in rows if r.tool != "tunelab" and r.wall_s is not None]
    remade = sweep_summary.ratio_lines(rows)
    if remade != [x for x in record["lines"] if x.startswith("sweep: tunelab ÷")]:
        raise SystemExit(f"the committed lines {record['lines']} are not what its rows give: {remade}")
    return lines + [f"committed: {x}" for x in remade]


def smoke(out: Path) -> int:
    from tunelab.models.tiny import build_tiny_model

    model_dir = out / "models" / "tiny"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, layers=2, hidden=64, seed=0)
    inputs = sweep_data.write(out / "data", model_dir, SMOKE_DATA, SMOKE_SWEEP.max_seq_len, "tiny")
    counts = sweep_data.lengths(inputs)
    print(f"[sweep] smoke: train {sweep_data.describe(counts, SMOKE_SWEEP.max_seq_len)}", flush=True)
    found = registry.find("tunelab")
    row = sweep_run.run_pipeline(found, inputs, SMOKE_SWEEP, out / "runs" / "tunelab" / "0", 0, "smoke",
                                 sweep_data.mean_tokens(counts, SMOKE_SWEEP.max_seq_len),
                                 fresh_caches=False)
    print(sweep_run.describe(row), flush=True)
    if row.error:
        raise SystemExit(f"tunelab's pipeline failed: {row.error}")
    print(sweep_summary.table([row], row.load_before))
    print("\n".join(committed_lines()), flush=True)
    return 0
