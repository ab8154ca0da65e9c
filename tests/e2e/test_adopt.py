"""`tunelab adopt`: a directory of torchtune-style runs (epoch folders with adapters, a slurm-*.out per run in
the shapes of the reference log formats) becomes an experiment that `tunelab eval` and `tunelab report` work
on; the sources are never modified; a broken source is named and the rest adopted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()
LOGS = Path(__file__).parent.parent / "fixtures" / "logs"


def torchtune_run(root: Path, tiny_model: Path, rank: int, lr: float, seed: int) -> Path:
    """epoch_0/ and epoch_1/ with real PEFT adapters of the tiny model, and the job's slurm-<id>.out."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root.mkdir(parents=True)
    for epoch in range(2):
        torch.manual_seed(seed + epoch)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                               LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False))
        model.save_pretrained(root / f"epoch_{epoch}")
    log = (LOGS / "torchtune_ok.out").read_text()
    log = log.replace("lora_rank: 64", f"lora_rank: {rank}").replace(
        "gradient_accumulation_steps: 1", f"gradient_accumulation_steps: 1\noptimizer:\n  lr: {lr}")
    (root / f"slurm-{1000 + seed}.out").write_text(log)
    return root


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_torchtune_runs_are_adopted_evaluated_and_reported(tmp_path, tiny_model, caps_dataset, write_spec):
    src = tmp_path / "ck-out"
    a = torchtune_run(src / "ck-out-r4", tiny_model, 4, 1e-4, 1)
    b = torchtune_run(src / "ck-out-r16", tiny_model, 16, 1e-4, 2)
    broken = src / "ck-out-broken"
    (broken / "epoch_0").mkdir(parents=True)  # a checkpoint folder without an adapter, and no log
    before = digest(src)
    spec = write_spec(factors={}, eval={"max_tokens": 8, "limit": 12})
    out = tmp_path / "adopted"

    res = runner.invoke(app, ["adopt", str(a), str(b), str(broken), "--out", str(out), "--spec", str(spec),
                              "--model", str(tiny_model)])
    assert res.exit_code == 0, res.output
    flat = "".join(res.output.split())  # the console wraps long paths
    assert "adopted2run(s)" in flat and "skipped:" in flat and "ck-out-broken:atorchtuneoutputdirwithoutitslog" in flat
    for name, rank in (("ck-out-r4", 4), ("ck-out-r16", 16)):
        run = out / "runs" / name
        cfg = yaml.safe_load((run / "run.yaml").read_text())
        assert cfg["factors"] == {"lora_rank": rank} and cfg["training"]["lora_rank"] == rank
        assert json.loads((run / "status.json").read_text())["state"] == "completed"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 218 and summary["final_loss"] == 0.1 and summary["peak_memory_gib"] == 5.12
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "loss" in r] == [1, 54, 109, 110, 163, 218]  # losses per step
        for e in (0, 1):
            assert (run / "checkpoints" / f"epoch_{e}" / "adapter_model.safetensors").is_file()

    res = runner.invoke(app, ["adopt", str(a), str(broken), "--out", str(tmp_path / "again"), "--spec", str(spec),
                              "--model", str(tiny_model), "--json"])
    assert res.exit_code == 0, res.output
    adopted = json.loads(res.stdout)  # the JSON alone on stdout, valid against `schema --output adopt`
    jsonschema.validate(adopted, json.loads(runner.invoke(app, ["schema", "--output", "adopt"]).stdout))
    assert adopted["experiment_dir"] == str(tmp_path / "again") and adopted["adopted"] == ["ck-out-r4"]
    assert len(adopted["problems"]) == 1 and "ck-out-broken" in adopted["problems"][0]

    ev = runner.invoke(app, ["eval", str(out)])
    assert ev.exit_code == 0, ev.output
    rep = runner.invoke(app, ["report", str(out)])
    assert rep.exit_code == 0, rep.output
    md = (out / "report" / "report.md").read_text()
    assert "ck-out-r4" in md and "ck-out-r16" in md and "lora_rank" in md
    assert "tiny_base" in md and "**lora_rank:** 4, 16" in md and "tokenizer missing" not in md
    assert digest(src) == before  # adopting never modifies the sources
