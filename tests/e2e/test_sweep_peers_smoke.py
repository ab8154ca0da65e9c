"""`python benchmarks/sweep_peers.py --smoke` (issue 66 item 1), run as a user runs it: tunelab's whole pipeline for
real on the tiny model (scaffold, run, eval, report: one run and the base), and each peer's committed real output
read again by the benchmark's parsers. The checks compare the printed figures with what they were computed from,
read here independently (the phase shares with the wall, the committed losses with a plain pattern over the logs,
the committed accuracies from lm-eval's own results files); never what a time is."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "benchmarks" / "results" / "sweep-peers-2026-11-27"
sys.path.insert(0, str(ROOT / "benchmarks"))
from peerlib import sweep_data  # noqa: E402

BAR_LOSS = re.compile(r"\d+\|\d+\|Loss: ([-+0-9.eE]+)")  # torchtune's progress bar, one line a step


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("sweep-peers")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_peers.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout, out


@pytest.mark.rehearsal  # `make test-rehearsals`, outside make test
@pytest.mark.slow  # a tiny model built, one run trained, evaluated and reported through tunelab's CLI
def test_tunelab_pipeline_runs_every_phase_and_scores_every_target(smoke):
    stdout, out = smoke
    (line,) = [x for x in stdout.splitlines() if x.startswith("tunelab: wall ")]
    shares = dict((name, int(pct)) for name, pct in re.findall(r"(scaffold|run|eval|report) (\d+)%", line))
    assert list(shares) == ["scaffold", "run", "eval", "report"]
    # phases one after the other, their wall the span: the shares add to 100 % less the gaps between the processes,
    # each printed rounded (four halves: at most 102)
    assert 96 <= sum(shares.values()) <= 102
    # one run (rank 8, lr 2e-3) and the base control, each scored; the report written by the last phase
    assert re.search(r"exact match: tiny_r8_lr0\.002 [\d.]+ \(loss [\d.]+\), tiny_base [\d.]+,", line), line
    experiment = out / "runs" / "tunelab" / "0" / "experiment"
    assert len(list(experiment.glob("*/*/eval/*/exact_match/scores.json"))) == 2
    assert (experiment / "report" / "report.md").is_file()
    # the rows: every one rendered within max_seq_len (longer draws dropped), the drops counted
    data = json.loads((out / "data" / "DATA.json").read_text())
    assert data["rows"] == {"train": 16, "validation": 4, "test": 4} and data["max_seq_len"] == 256


@pytest.mark.rehearsal
@pytest.mark.slow
def test_committed_peer_output_is_read_again_as_recorded(smoke):
    stdout, _ = smoke
    if not (COMMITTED / "sweep.json").is_file():  # the benchmark says so; nothing to read again
        assert f"committed: no peer output committed at {COMMITTED}" in stdout
        pytest.skip(f"no committed run at {COMMITTED}")
    record = json.loads((COMMITTED / "sweep.json").read_text())
    peers = [r for r in record["rows"] if r["tool"] != "tunelab" and r["wall_s"] is not None]
    assert peers, "the committed run has no peer row"
    for row in peers:
        where = COMMITTED / row["tool"] / str(row["repeat"])
        printed = re.search(rf"^{row['tool']}: committed output parsed: (\d+) runs, final loss (.*); exact match (.*);",
                            stdout, re.MULTILINE)
        assert printed, stdout
        runs = [o for o in row["outcomes"] if o["rank"] is not None]
        assert int(printed.group(1)) == len(runs) == 4
        for i, name in enumerate(row["phases"]):  # each training phase's last bar loss, read here by a plain pattern
            if name.startswith("train ") and row["tool"] == "torchtune":
                losses = BAR_LOSS.findall((where / f"phase{i}.log").read_text())
                assert f"{name.removeprefix('train ')} {float(losses[-1])}" in printed.group(2)
        for results in (where / "eval").glob("*/**/results_*.json"):  # lm-eval's own files, read here
            target = results.relative_to(where / "eval").parts[0]
            (metrics,) = json.loads(results.read_text())["results"].values()
            assert f"{target} {metrics['exact_match,strip']}" in printed.group(3)
    for line in (x for x in record["lines"] if x.startswith("sweep: tunelab ÷")):
        assert f"committed: {line}" in stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tunelab.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", layers=1, hidden=32, seed=0)


@pytest.mark.slow  # a tokenizer and the word list loaded
def test_rows_are_the_seeds_and_ask_for_the_first_word_capitalized(tiny, tmp_path):
    sizes = sweep_data.SweepData(train=12, validation=2, test=3, seed=7)
    a = sweep_data.write(tmp_path / "a", tiny, sizes, 200)
    b = sweep_data.write(tmp_path / "b", tiny, sizes, 200)
    for split in ("train", "validation", "test"):
        assert a.jsonl(split).read_bytes() == b.jsonl(split).read_bytes()
    rows = a.rows("train")
    assert len(rows) == 12
    for row in rows:
        system, user, answer = row["messages"]
        passage = user["content"].removeprefix("Passage: ").split("\n\n")[0]
        assert answer["content"] == passage.split()[0].capitalize()
    # the tiny tokenizer is a byte each: every row written fits 200 tokens, the longer draws were dropped and counted
    assert max(sweep_data.lengths(a)) <= 200
    drops = json.loads((a.data_dir / "DATA.json").read_text())["dropped_over_max_seq_len"]
    assert set(drops) == {"train", "validation", "test"} and drops == sweep_data.dropped(b)
