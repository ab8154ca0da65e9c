"""A real two-stage run (issue 13's done-when): stage 1 on one dataset, stage 2 on another in a curriculum
order with the optimizer carried over; killed (SIGKILL) in stage 2 and run again, it resumes stage 2 from
its checkpoint without redoing stage 1 and ends with exactly the metrics of an uninterrupted run; it is
evaluated after each stage and the report names the stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.faults import KILL_ENV
from tunelab.fsutil import read_jsonl
from tunelab.scaffold.write import scaffold
from tunelab.train.job import train

pytestmark = pytest.mark.slow

WORDS = ["ox", "cat", "bird", "horse", "rabbit", "giraffe", "elephant", "crocodile", "yak", "mole", "zebra",
         "badger", "penguin", "kangaroo", "hedgehog", "owl"]


def _datasets(root: Path) -> tuple[Path, Path]:
    """Two small datasets: lower -> Capitalized words, and animals with a difficulty to order by."""
    words = [{"input": w, "output": w.capitalize()} for w in ["sun", "moon", "star", "tree", "rock", "lake", "hill",
                                                               "road", "sand", "snow", "rain", "wind"]]
    animals = [{"input": w, "output": w.capitalize(), "difficulty": (i * 7) % 16} for i, w in enumerate(WORDS)]
    paths = root / "words.json", root / "animals.json"
    for path, rows in zip(paths, (words, animals)):
        path.write_text(json.dumps({"train": rows, "validation": rows[:4], "test": rows[:4]}))
    return paths


def _experiments(write_spec, root: Path, words: Path, animals: Path) -> list:
    """The same staged experiment twice (a reference and one to kill), all paths absolute."""
    spec = write_spec(controls=False, factors={"lora_rank": [4]},
                      datasets=[{"name": "words", "path": str(words)}, {"name": "animals", "path": str(animals)}],
                      training={"batch_size": 4, "logging_steps": 1},
                      stages=[{"name": "words", "dataset": "words", "epochs": 1},
                              {"name": "animals", "dataset": "animals", "epochs": 2, "learning_rate": 0.001,
                               "order": {"by_field": "difficulty"}, "checkpoint_every": 3, "optimizer": "carried"}],
                      eval={"max_tokens": 8, "limit": 4})
    ref = root / "ref" / "experiment.yaml"
    ref.parent.mkdir(parents=True)
    ref.write_text(spec.read_text())
    return [scaffold(path).runs[0] for path in (ref, spec)]


def _train(cfg, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab", "train", str(cfg.run_dir / "run.yaml")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **env})


def test_two_stage_run_resumes_in_stage_two_without_redoing_stage_one(tmp_path, write_spec, capsys):
    words, animals = _datasets(tmp_path)
    ref, cfg = _experiments(write_spec, tmp_path, words, animals)
    assert [s.dataset.name for s in cfg.stages] == ["words", "animals"] and cfg.dataset.name == "animals"
    # the uninterrupted reference and the resumed job train in this process (a fresh one costs ~12 s of imports);
    # the job that is killed is `tunelab train`, a process of its own
    assert train(ref).steps == 11

    # stage 1: 12 rows / 4 = 3 steps; stage 2 (16 rows: 4 steps an epoch) saves every 3 steps: killed in its
    # 4th step, mid-epoch after checkpoint-3 (the 7th micro-batch of the process)
    killed = _train(cfg, **{KILL_ENV: "train.step#7"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stage1 = cfg.run_dir / "checkpoints" / "epoch_0" / "adapter_model.safetensors"
    stamp = stage1.stat().st_mtime_ns
    assert [r["name"] for r in json.loads((cfg.run_dir / "stages.json").read_text())] == ["words"]

    capsys.readouterr()
    assert train(cfg).steps == 11
    again = capsys.readouterr().out
    assert "stage 1/2" not in again and "stage 2/2 (animals)" in again
    assert "resuming from checkpoint-3" in again
    assert stage1.stat().st_mtime_ns == stamp  # stage 1's adapter was not written again

    rows, ref_rows = (read_jsonl(c.run_dir / "metrics.jsonl") for c in (cfg, ref))
    steps = [r["step"] for r in rows if r["loss"] is not None]
    assert steps == list(range(1, 3 + 2 * 4 + 1))  # every step of both stages once: 3 + 2 epochs x 4 steps
    assert [r["stage"] for r in rows] == ["words"] * 3 + ["animals"] * 8
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], rel=1e-5)
    stages = json.loads((cfg.run_dir / "stages.json").read_text())
    assert [(s["name"], s["epochs"], s["first_step"], s["last_step"]) for s in stages] == [
        ("words", [0], 0, 3), ("animals", [1, 2], 3, 11)]
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["steps"] == 11 and summary["checkpoints"] == ["epoch_0", "epoch_1", "epoch_2"]
    # stage 2 fed its rows easiest first, both epochs; the order file names the stage
    expected = [i for i, _ in sorted(enumerate(WORDS), key=lambda p: ((p[0] * 7) % 16, p[0]))]
    orders = [o for o in read_jsonl(cfg.run_dir / "data_order.jsonl") if o.get("stage") == "animals"]
    assert [(o["epoch"], o["indices"]) for o in orders] == [(1, expected), (2, expected)]

    # evaluated after each stage (eval.epochs defaults to `stages`): epoch_0 and epoch_2, not epoch_1
    res = CliRunner().invoke(app, ["eval", str(cfg.run_dir.parents[1])])
    assert res.exit_code == 0, res.output
    evaluated = sorted(p.parent.parent.name for p in (cfg.run_dir / "eval").glob("*/*/scores.json"))
    assert evaluated == ["epoch_0", "epoch_2"]
    res = CliRunner().invoke(app, ["report", str(cfg.run_dir.parents[1])])
    assert res.exit_code == 0, res.output
    report = (cfg.run_dir.parents[1] / "report" / "report.md").read_text()
    assert "words/epoch_0" in report and "animals/epoch_1" in report
    # results --json and the export records say which stage each evaluated checkpoint ends, as stages.json does
    from tunelab.export.records import sweep_record

    res = CliRunner().invoke(app, ["results", str(cfg.run_dir.parents[1]), "--json"])
    assert res.exit_code == 0, res.output
    (record,) = [r for r in json.loads(res.stdout)["runs"] if r["name"] == cfg.name]
    where = {f"epoch_{e}": (s["name"], k, k == len(s["epochs"]) - 1) for s in stages for k, e in enumerate(s["epochs"])}
    assert {(e["label"], e["stage"], e["stage_epoch"], e["ends_stage"]) for e in record["eval"]} == {
        (label, *where[label]) for label in evaluated}
    params = next(r for r in sweep_record(cfg.run_dir.parents[1]).runs if r.name == cfg.name).params
    assert [(params[f"checkpoint_stages.{label}.stage"], params[f"checkpoint_stages.{label}.ends_stage"])
            for label in evaluated] == [("words", "True"), ("animals", "True")]
