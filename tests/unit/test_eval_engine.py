"""eval.engine resolved, the vLLM server's arguments from the sweep, and which adapters vLLM serves unmerged.
(The real server, end to end: tests/e2e/test_eval_vllm.py.)"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluate import engine as engine_mod
from tunelab.evaluate.engine import resolve_engine
from tunelab.evaluate.vllm_eval import unservable
from tunelab.evaluate.vllm_server import ServerArgs, lora_rank_bound
from tunelab.spec.evaluation import VLLM_PYTHON_ENV, Engine, EvalSpec


def runs(**eval_fields):
    return [SimpleNamespace(eval=EvalSpec(**eval_fields))]


def test_auto_is_hf_without_a_gpu_and_vllm_with_one(monkeypatch):
    monkeypatch.setenv(VLLM_PYTHON_ENV, "/opt/vllm/bin/python")
    monkeypatch.setattr(engine_mod, "gpu_visible", lambda: False)
    assert resolve_engine(runs()) == (Engine.HF, None)
    monkeypatch.setattr(engine_mod, "gpu_visible", lambda: True)
    chosen, home = resolve_engine(runs())
    assert chosen == Engine.VLLM and home is not None and home.python == "/opt/vllm/bin/python"
    assert resolve_engine(runs(), "hf") == (Engine.HF, None)  # --engine wins over the spec


def test_auto_without_a_vllm_is_hf_and_an_explicit_vllm_says_where_to_get_one(monkeypatch):
    monkeypatch.delenv(VLLM_PYTHON_ENV, raising=False)
    monkeypatch.setattr(engine_mod.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(engine_mod, "gpu_visible", lambda: True)
    assert resolve_engine(runs())[0] == Engine.HF
    with pytest.raises(TunelabError, match="scripts/vllm-env") as err:
        resolve_engine(runs(engine="vllm"))
    assert err.value.field == "eval.engine"
    with pytest.raises(TunelabError, match="unknown engine"):
        resolve_engine(runs(), "sglang")


def test_a_running_servers_url_is_used_as_it_is(monkeypatch):
    _, home = resolve_engine(runs(engine="vllm", vllm={"url": "http://node7:8000/v1"}))
    assert home is not None and home.url == "http://node7:8000/v1" and home.python is None


def test_the_plan_prices_vllm_when_asked_or_auto_on_a_gpu_with_a_named_vllm():
    assert EvalSpec(engine="vllm").planned_engine(gpu=False) == Engine.VLLM
    assert EvalSpec().planned_engine(gpu=True) == Engine.HF  # auto, no vLLM named: the node may have none
    assert EvalSpec(vllm={"python": "/v/bin/python"}).planned_engine(gpu=True) == Engine.VLLM
    assert EvalSpec(vllm={"python": "/v/bin/python"}).planned_engine(gpu=False) == Engine.HF


def test_the_plan_and_the_evaluation_agree_on_a_vllm_named_by_the_environment(tmp_path, monkeypatch):
    """$TUNELAB_VLLM_PYTHON with nothing in the spec: the plan on a GPU prices vLLM (one server start for the run's
    load) and the evaluation on a GPU node resolves vLLM with that interpreter; without it both are HF."""
    from tunelab.catalog import resolve_gpu
    from tunelab.forecast.evalrun import predict_run_eval
    from tunelab.forecast.jobstart import VLLM_SERVER_START_S
    from tunelab.forecast.runs import ASSUMED_STARTUP_S
    from tunelab.ledger.generation import GenerationOrigin, GenerationRow
    from tunelab.rundir.config import RunConfig

    real_find_spec = engine_mod.importlib.util.find_spec
    # this interpreter has no vllm of its own (whatever is installed here): only a named one counts
    monkeypatch.setattr(engine_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    monkeypatch.setattr(engine_mod, "gpu_visible", lambda: True)  # the evaluation's node has the plan's GPU
    model, h100 = "qwen2.5-0.5b", resolve_gpu("H100")
    cfg = RunConfig(name="r", kind="finetune", experiment="e", experiment_dir=str(tmp_path),  # type: ignore[arg-type]
                    model={"name": "q", "path": model}, dataset={"name": "d", "path": str(tmp_path)},
                    training={"epochs": 2}, eval={"epochs": "all", "max_tokens": 8})
    probe = GenerationRow(key=f"probe:{model}", origin=GenerationOrigin.PROBED, model_path=model, device="H100",
                          prefill_tokens_per_s=1e5, decode_fixed_s=0.01, decode_row_s=0.001,
                          recorded_at="2026-01-01T00:00:00")

    def planned() -> tuple[Engine, float]:
        est = predict_run_eval(cfg, h100, lambda c: {"test": tuple((30, 25) for _ in range(10))},
                               generation=[probe], errors=[])
        return cfg.eval.planned_engine(gpu=True), est.load_s

    monkeypatch.setenv(VLLM_PYTHON_ENV, "/opt/vllm/bin/python")
    engine, load_s = planned()
    chosen, home = resolve_engine([cfg])
    # no history: the job's own start assumed, then the server's (forecast/jobstart.py, issue 54)
    assert engine == chosen == Engine.VLLM and load_s == ASSUMED_STARTUP_S + VLLM_SERVER_START_S
    assert home is not None and home.python == "/opt/vllm/bin/python"
    monkeypatch.delenv(VLLM_PYTHON_ENV)
    engine, load_s = planned()
    assert engine == resolve_engine([cfg])[0] == Engine.HF and load_s == 2 * ASSUMED_STARTUP_S  # a load per target


def test_server_arguments_come_from_the_sweep(tmp_path):
    args = ServerArgs(model="/m/base", dtype="bfloat16", max_loras=3, max_lora_rank=12, max_cpu_loras=2,
                      tensor_parallel_size=2, gpu_memory_utilization=0.8, adapters=("/r/a", "/r/b"))
    argv = " ".join(args.argv(8123, tmp_path / "t.jinja"))
    for part in ("--model /m/base", "--port 8123", "--dtype bfloat16", "--enable-lora --max-loras 3",
                 "--max-lora-rank 16", "--max-cpu-loras 3", "--tensor-parallel-size 2", "--gpu-memory-utilization 0.8",
                 "--lora-modules /r/a=/r/a /r/b=/r/b", "--generation-config vllm",
                 f"--chat-template {tmp_path}/t.jinja"):
        assert part in argv
    assert "--enable-lora" not in " ".join(ServerArgs("/m", "float32", 0, 1, 0).argv(1, tmp_path / "t"))
    assert [lora_rank_bound(r) for r in (1, 4, 8, 9, 33, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(TunelabError, match="largest"):
        lora_rank_bound(1024)


@pytest.mark.parametrize(("config", "reason"), [
    ({"r": 8}, None),
    ({"r": 8, "modules_to_save": ["score"]}, None),
    ({"r": 8, "modules_to_save": ["embed_tokens", "lm_head"]}, "modules_to_save ['embed_tokens', 'lm_head']"),
    ({"r": 8, "use_dora": True}, "DoRA"),
    ({"r": 8, "trainable_token_indices": [3]}, "trainable tokens"),
])
def test_which_adapters_vllm_serves_unmerged(tmp_path, config, reason):
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    got = unservable(tmp_path)
    assert got is None if reason is None else reason in (got or "")


def test_the_plan_prices_a_vllm_evaluation_as_one_batched_workload_and_one_server_start(tmp_path):
    from tunelab.forecast.evalrun import predict_run_eval
    from tunelab.forecast.evaltime import (
        BATCHED_SAMPLE_OVERHEAD_S,
        SAMPLE_OVERHEAD_S,
        predict_eval_time,
    )
    from tunelab.forecast.jobstart import VLLM_SERVER_START_S
    from tunelab.forecast.runs import ASSUMED_STARTUP_S
    from tunelab.ledger.generation import GenerationOrigin, GenerationRow
    from tunelab.rundir.config import RunConfig

    model = "qwen2.5-0.5b"  # a catalog model: its architecture is known without a directory
    probe = GenerationRow(key=f"probe:{model}", origin=GenerationOrigin.PROBED, model_path=model, device="cpu",
                          cpu_threads=2, prefill_tokens_per_s=1000.0, decode_fixed_s=0.01, decode_row_s=0.002,
                          recorded_at="2026-01-01T00:00:00")
    rows = tuple((30, 25) for _ in range(10))  # 10 test rows: 30 tokens, the answer from token 25

    def cfg(engine: str) -> RunConfig:
        return RunConfig(name="r", kind="finetune", experiment="e",  # type: ignore[arg-type]
                         experiment_dir=str(tmp_path),
                         model={"name": "q", "path": model}, dataset={"name": "d", "path": str(tmp_path)},
                         training={"epochs": 4}, eval={"epochs": "all", "max_tokens": 8, "engine": engine})

    hf = predict_run_eval(cfg("hf"), None, lambda c: {"test": rows}, generation=[probe], batch_size=16)
    vllm = predict_run_eval(cfg("vllm"), None, lambda c: {"test": rows}, generation=[probe], batch_size=16)
    # HF evaluates the built-in exact_match with tunelab's own loop (evaluate/batched.py): its lighter work per sample
    one = predict_eval_time(model=model, gpu=None, samples=10, prompt_tokens=[25] * 10, answer_tokens=[5] * 10,
                            max_tokens=8, batch_size=16, generation=[probe], batched=True)
    together = predict_eval_time(model=model, gpu=None, samples=40, prompt_tokens=[25] * 40, answer_tokens=[5] * 40,
                                 max_tokens=8, batch_size=64, generation=[probe])
    assert hf.targets == vllm.targets == 4
    assert one.overhead_s == pytest.approx(10 * BATCHED_SAMPLE_OVERHEAD_S) and BATCHED_SAMPLE_OVERHEAD_S == 0.001
    assert together.overhead_s == pytest.approx(40 * SAMPLE_OVERHEAD_S)  # vLLM: inspect-ai's loop
    assert hf.seconds == pytest.approx(4 * one.seconds) and hf.load_s == pytest.approx(4 * one.load_s)
    # one server for every target: the job's start (assumed, no history) and the server's, once
    assert vllm.seconds == pytest.approx(together.seconds) and vllm.load_s == ASSUMED_STARTUP_S + VLLM_SERVER_START_S
    # four checkpoints' rows share their batches: less generation time than four targets' apart
    assert together.generation_s < 4 * one.generation_s


def test_what_vllm_serves_as_an_adapter_merges_or_leaves_to_hf_each_with_its_reason(tmp_path):
    from tunelab.evaluate.engine import VllmHome
    from tunelab.evaluate.targets import Target
    from tunelab.evaluate.vllm_eval import plan_serving
    from tunelab.evaluate.work import TargetWork, WorkItem
    from tunelab.spec import TaskSpec

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 262}))

    def work(name: str, adapter_config: dict | None, task: str = "exact_match") -> TargetWork:
        adapter = None
        if adapter_config is not None:
            adapter = tmp_path / name
            adapter.mkdir()
            (adapter / "adapter_config.json").write_text(json.dumps(adapter_config))
        cfg = SimpleNamespace(name=name, experiment_dir=str(tmp_path))
        target = Target("epoch_0" if adapter else "base", 0 if adapter else None, base, adapter)
        return TargetWork(cfg, target, (WorkItem(cfg, target, TaskSpec(name=task)),))  # type: ignore[arg-type]

    plain, saved, control, choice = (work("plain", {"r": 8}), work("saved", {"r": 8, "modules_to_save": ["lm_head"]}),
                                     work("control", None), work("choice", {"r": 8}, task="choice"))
    servers, left = plan_serving([plain, saved, control, choice], VllmHome("/v/bin/python", None))
    merged = tmp_path / "eval" / "vllm-merged" / "saved-epoch_0"
    assert list(servers) == [base, merged]
    assert [(s.work, s.adapter) for s in servers[base]] == [(plain, tmp_path / "plain"), (control, None)]
    [one] = servers[merged]
    assert one.adapter is None and one.merge_reason and "modules_to_save ['lm_head']" in one.merge_reason
    assert [(w, "choice" in why) for w, why in left] == [(choice, True)]
    # a running server named by URL serves one base: the checkpoint to merge goes to HF instead, saying why
    servers, left = plan_serving([plain, saved], VllmHome(None, "http://h:1/v1"))
    assert list(servers) == [base] and [w for w, _ in left] == [saved] and "eval.vllm.url" in left[0][1]
