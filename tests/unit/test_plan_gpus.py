"""How many GPUs and nodes a run needs (issue 38): the fewest GPUs whose FSDP-sharded peak fits a model too large
for one GPU, the nodes they take, the time on them; nodes_per_run raised where a run's GPUs exceed a node; the
validate errors that name the field."""

import json
import math
import shutil

import pytest
import yaml

from tunelab.catalog import resolve_architecture, resolve_gpu
from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import fits, predict_peak, step_shape
from tunelab.forecast.gpus import even_nodes, nodes_for
from tunelab.forecast.speed import SCALING_EFFICIENCY
from tunelab.mcp.models import PlanOut
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import make_plan
from tunelab.plan.validate import validate_path
from tunelab.spec import Strategy

H100 = resolve_gpu("H100-80GB")
TOKENS = 27  # every caps example, in tiny's tokenizer (test_estimate.py::test_packing_measurement_...)


@pytest.fixture(autouse=True)
def fresh_history_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    monkeypatch.delenv("TUNELAB_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))  # no user config unless a test writes one


@pytest.fixture(scope="module")
def llama70b(tmp_path_factory, tiny_model):
    """A model directory plan accepts for Llama-3.1-70B: its real config.json (what the simulator builds), tiny's
    tokenizer (what the data is measured with) and a placeholder weights file (plan only checks that one is
    there; nothing here loads weights)."""
    path = tmp_path_factory.mktemp("models") / "llama70b"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(resolve_architecture("Llama-3.1-70B").hf_config()))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model / name, path / name)
    (path / "model.safetensors").write_bytes(b"x")
    return path


def _spec_70b(write_spec, llama70b, **resources):
    return write_spec(models=[{"name": "llama70b", "path": str(llama70b)}], factors={"lora_rank": [16]},
                      training={"batch_size": 1, "modules_to_save": []},
                      resources={"gpu": "H100-80GB", **resources})


def test_a_model_too_large_for_one_gpu_plans_to_the_fewest_gpus_whose_sharded_peak_fits(write_spec, llama70b,
                                                                                          tmp_path, monkeypatch):
    """Llama-3.1-70B with LoRA on H100-80GB (140 GB of bf16 weights) fits no single GPU; the plan names the fewest
    GPUs whose FSDP-sharded peak fits, checked here against predict_peak at that count and one fewer, the nodes
    at the user config's node size (ceil), and the time on them at the stated scaling efficiency."""
    config = tmp_path / "user.yaml"
    config.write_text("node_gpus: 1\n")  # a node of one GPU: every GPU a node, so the count shows in the nodes
    monkeypatch.setenv("TUNELAB_CONFIG", str(config))
    plan = make_plan(_spec_70b(write_spec, llama70b), gpu=H100)
    (name, e), = plan.estimates.items()
    need = e.gpus_needed
    assert e.processes == 1 and e.peak_memory_gib > H100.memory_gib and need is not None

    run = plan.runs[0]
    t = run.training
    assert e.tokens_per_microbatch == TOKENS
    inputs = MemoryInputs.of_training(t, t.planned_dtype(H100.compute_capability))
    shape = step_shape(1, t.max_seq_len, False, TOKENS)
    n = need.gpus
    at_n = predict_peak(run.model.path, inputs, shape, n, Strategy.FSDP if n > 1 else None)
    below = predict_peak(run.model.path, inputs, shape, n - 1, Strategy.FSDP if n > 2 else None)
    assert n > 1 and fits(at_n, H100.memory_gib) and not fits(below, H100.memory_gib)
    assert need.peak_memory_gib == round(at_n.required_gib, 2)
    assert need.fewer_peak_memory_gib == round(below.required_gib, 2)
    assert need.strategy is Strategy.FSDP and need.micro_batch == 1
    assert (need.node_gpus, need.nodes, need.gpus_per_run) == (1, math.ceil(n / 1), n)
    assert need.node_gpus_source == f"node_gpus in the user config {config}"
    # the time on n GPUs: the run's own estimate at that count, at the assumed scaling efficiency
    assert f"{n} processes at {SCALING_EFFICIENCY:.0%} scaling efficiency (assumed)" in need.time_source
    assert need.seconds is not None and need.gpu_hours == pytest.approx(need.seconds * n / 3600, abs=1e-4)

    md = render_plan_md(plan)
    assert "## GPUs and nodes" in md and f"a node has 1 GPUs (node_gpus in the user config {config})" in md
    assert f"set resources.gpus_per_run: {n}" in md
    assert any(f"it fits {n} GPUs FSDP-sharded" in w for w in plan.warnings)
    out = json.loads(PlanOut.of(plan).model_dump_json())  # `plan --json` and the MCP plan tool
    assert out["estimates"][name]["gpus_needed"]["gpus"] == n and out["estimates"][name]["nodes"] == 1
    assert out["estimates"][name]["gpus_needed"]["nodes"] == n


def test_validate_names_gpus_per_run_below_the_fewest_that_fit(write_spec, llama70b):
    checks = validate_path(_spec_70b(write_spec, llama70b), H100)
    (check,) = checks
    assert check.gpus_needed is not None and check.gpus_needed > 1
    n = check.gpus_needed
    assert any(e.startswith(f"llama70b_r16: resources.gpus_per_run is 1, below the fewest GPUs that fit ({n})")
               and f"set resources.gpus_per_run: {n}" in e for e in check.errors), check.errors
    (enough,) = validate_path(_spec_70b(write_spec, llama70b, gpus_per_run=n), H100)
    assert enough.gpus_needed is None and not any("gpus_per_run" in e for e in enough.errors), enough.errors


def test_nodes_per_run_is_raised_where_a_run_needs_more_gpus_than_a_node_has(write_spec):
    from tunelab.rundir.config import load_run_config
    from tunelab.scaffold.write import scaffold

    spec = write_spec(factors={"lora_rank": [4]}, resources={"executor": "slurm", "gpus_per_run": 12,
                                                            "node_gpus": 8})
    plan = scaffold(spec, gpu=H100)
    (cfg,) = plan.finetune_runs
    assert cfg.resources.nodes_per_run == 2 and cfg.resources.run_gpus_per_node() == 6
    assert load_run_config(spec.parent / "runs" / cfg.name).resources.nodes_per_run == 2  # run.yaml says it
    assert plan.estimates[cfg.name].nodes == 2 and plan.estimates[cfg.name].processes == 12
    md = render_plan_md(plan)
    assert "a node has 8 GPUs (resources.node_gpus in experiment.yaml)" in md
    assert "tiny_r4: gpus_per_run 12 exceeds 1 node(s) of 8 GPUs: nodes_per_run raised to 2 (6 GPUs on each node)" in md
    # the spec's own nodes_per_run is kept where its nodes hold the GPUs
    spec = write_spec(factors={"lora_rank": [4]}, resources={"executor": "slurm", "gpus_per_run": 12,
                                                            "nodes_per_run": 3})
    assert make_plan(spec, gpu=H100, estimates=False).runs[0].resources.nodes_per_run == 3


def test_node_counts_split_the_gpus_evenly():
    assert [nodes_for(g, 8) for g in (1, 8, 9, 16, 17)] == [1, 1, 2, 2, 3]
    assert even_nodes(12, 8) == 2 and even_nodes(16, 8) == 2 and even_nodes(16, 8, at_least=4) == 4
    assert even_nodes(9, 8) == 3  # 9 GPUs split over 2 nodes unevenly: 3 nodes of 3
    assert even_nodes(12, 8, processes=6) == 2 and even_nodes(5, 4, processes=3) is None


def test_the_local_executor_cannot_span_nodes(write_spec):
    spec = write_spec(factors={"lora_rank": [4]}, resources={"gpus_per_run": 16})  # executor: local (default)
    plan = make_plan(spec, gpu=H100, estimates=False)
    assert plan.runs[0].resources.nodes_per_run == 2  # 16 > 8 GPUs a node (assumed)
    assert any("local executor cannot" in w for w in plan.warnings)
    (check,) = validate_path(spec, H100)
    assert any(e.startswith("tiny_r4: resources.nodes_per_run is 2, but the local executor runs every job on this "
                            "machine, one node") for e in check.errors), check.errors
    assert yaml.safe_load(spec.read_text())["resources"] == {"cpu_runs_at_once": 1, "gpus_per_run": 16}  # untouched
