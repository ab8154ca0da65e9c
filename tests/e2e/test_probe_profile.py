"""`python -m tunelab.train.probe_steps RUN_YAML --profile DIR` on a CPU: a few steps of the Trainer's loop profiled
after the probe's timed steps, the trace and the per-part summary written, tunelab's callback writing its rows; and
benchmarks/step_cost.py in its smoke form (the same profile over two depths)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from tunelab.estimate.probe import probe_cfg
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.layout import PROBE_RESULTS_FILE
from tunelab.train import probe_steps
from tunelab.train.profile import PROFILE_STEPS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import step_cost  # noqa: E402

pytestmark = pytest.mark.slow
CAPS_TOKENS = 27  # a capitalization row: the words are all of one length (tests/e2e/test_probe.py), no padding


def test_probe_profile_writes_the_trace_and_every_part(tiny_model, caps_dataset, tmp_path):
    cfg = RunConfig(name="p", kind="finetune", experiment="p", experiment_dir=str(tmp_path),
                    model={"name": "tiny", "path": str(tiny_model)}, dataset={"name": "caps", "path": str(caps_dataset)},
                    prompt="Capitalize: {input}",
                    training={"batch_size": 8, "max_seq_len": 64, "lora_rank": 4, "learning_rate": 0.002})
    pcfg = probe_cfg(cfg, "p")
    out = tmp_path / "profile"
    assert probe_steps.main([str(save_run_config(pcfg, durable=False)), "--steps=2", "--profile", str(out)]) == 0
    assert (pcfg.run_dir / PROBE_RESULTS_FILE).is_file()  # the probe's own result as before

    trace = json.loads(gzip.decompress((out / "trace.json.gz").read_bytes()))
    assert any(e.get("name") == "part:forward" for e in trace["traceEvents"])
    ops = {r["name"]: r for r in json.loads((out / "ops.json").read_text())}
    assert ops["aten::mm"]["count"] > 0 and ops["aten::mm"]["self_cpu_us"] > 0
    assert "aten::mm" in (out / "ops.txt").read_text()

    parts = {p["part"]: p for p in json.loads((out / "parts.json").read_text())["parts"]}
    summary = json.loads((out / "parts.json").read_text())
    assert summary["steps"] == PROFILE_STEPS and summary["device"] == "cpu"
    for part in ("forward", "backward", "optimizer_step", "clip_grad_norm"):
        assert parts[part]["ops"] > 0 and parts[part]["calls"] >= PROFILE_STEPS, part
    assert parts["backward"]["ops"] > parts["forward"]["ops"]  # a LoRA backward: grads of A and B besides the input's
    assert parts["callbacks_tunelab"]["calls"] > 0 and parts["callbacks_tunelab"]["owner"] == "tunelab"
    assert parts["counting"]["syncs"] == 0  # tunelab's counts stay on the batch's device until a log reads them
    assert parts["log_save_evaluate"]["syncs"] >= 1  # the Trainer reads the loss at each log
    assert "callbacks_tunelab" in (out / "parts.txt").read_text()

    # tunelab's callback wrote a row per step; each step counted its 8 rows of 27 tokens (read at the log)
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= PROFILE_STEPS
    for a, b in zip(rows, rows[1:]):
        assert (b["tokens"] - a["tokens"], b["nonpad_tokens"] - a["nonpad_tokens"], b["examples"] - a["examples"]) \
            == (8 * CAPS_TOKENS, 8 * CAPS_TOKENS, 8)


def test_step_cost_smoke_counts_grow_with_depth(tmp_path, capsys):
    assert step_cost.main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("1 all-linear", "2 all-linear"))]
    assert [r[:3] for r in rows] == [["1", "all-linear", "7"], ["2", "all-linear", "14"]]  # 7 linear modules a layer
    (one, two) = rows
    assert int(two[3]) > int(one[3]) > 0  # a layer more: more operators a step
    assert one[10] == two[10] == "0"  # tunelab's syncs a step
    assert "operators per step per layer" in out and out.startswith("load before: ")
    assert (tmp_path / "L2-all-linear" / "parts.json").is_file()
