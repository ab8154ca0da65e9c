"""Planning a run on several processes: processes per run, steps, effective batch, per-device memory
(DDP whole model, FSDP sharded), time at the stated scaling efficiency, GPU-hours = time × processes."""

import pytest

from tunelab.catalog import resolve_architecture, resolve_gpu
from tunelab.estimate.memory import MemoryInputs, estimate_memory
from tunelab.forecast.runs import choose_strategy
from tunelab.forecast.speed import SCALING_EFFICIENCY
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import make_plan
from tunelab.rundir.estimate import RunEstimate
from tunelab.rundir.summary import Summary
from tunelab.spec import ResourcesSpec, Strategy


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


def test_processes_per_run_defaults():
    res = ResourcesSpec
    assert res(gpus_per_run=4).processes_per_run(cuda_devices=8) == 4  # one per GPU of the run
    assert res(gpus_per_run=4).processes_per_run(cuda_devices=0) == 1  # CPU: one unless asked
    assert res(nproc_per_run=2).processes_per_run(cuda_devices=0) == 2  # nproc_per_run wins (gloo on CPU)
    assert res(gpus_per_run=0).processes_per_run(cuda_devices=2) == 1
    assert res().strategy(1) is None
    assert res().strategy(2) == "ddp" and res(distributed="fsdp").strategy(2) == "fsdp"  # on CPU as on GPUs


def test_a_run_over_nodes_splits_its_processes_and_gpus_evenly():
    res = ResourcesSpec
    assert res(nodes_per_run=2, gpus_per_run=0).processes_per_run(cuda_devices=0) == 2  # CPU: one per node
    assert res(nodes_per_run=2, gpus_per_run=0).processes_per_node(cuda_devices=0) == 1
    two = res(nodes_per_run=2, gpus_per_run=16)
    assert two.processes_per_run(cuda_devices=8) == 16 and two.processes_per_node(cuda_devices=8) == 8
    assert two.run_gpus_per_node() == 8
    with pytest.raises(ValueError, match="gpus_per_run \\(3\\) must split evenly over nodes_per_run \\(2\\)"):
        res(nodes_per_run=2, gpus_per_run=3)
    with pytest.raises(ValueError, match="nproc_per_run \\(3\\)"):
        res(nodes_per_run=2, nproc_per_run=3, gpus_per_run=0)


def test_a_strategy_is_one_vocabulary_from_the_spec_to_run_yaml_and_back():
    """The spec's word, the plan's choice and run.yaml's estimate are Strategy members; their files keep the
    words (a spec or run.yaml written by hand or by an older version reads the same)."""
    spec = ResourcesSpec(distributed="fsdp")
    assert spec.distributed is Strategy.FSDP and ResourcesSpec().distributed == "auto"
    assert spec.model_dump(mode="json")["distributed"] == "fsdp"
    assert choose_strategy("ddp", 2, None, None, None) is Strategy.DDP
    back = RunEstimate.model_validate(RunEstimate(strategy=Strategy.FSDP).to_dict())
    assert back.to_dict()["strategy"] == "fsdp" and back.strategy is Strategy.FSDP
    with pytest.raises(ValueError, match="distributed"):
        ResourcesSpec(distributed="zero3")
    # what the trainer applied, in summary.json: a word this version does not know reads as unknown
    assert Summary.from_json({"distributed": "ddp"}).distributed is Strategy.DDP
    assert Summary.from_json({"distributed": "deepspeed"}).distributed is None
    assert Summary(distributed=Strategy.FSDP).to_json()["distributed"] == "fsdp"


def test_fsdp_memory_is_sharded_and_chosen_only_when_the_whole_model_does_not_fit():
    arch = resolve_architecture("meta-llama/Llama-3.1-8B")
    inputs = MemoryInputs(dtype="bfloat16", lora_rank=16)
    full = estimate_memory(arch, 4096, inputs)
    four = estimate_memory(arch, 4096, inputs, shards=4)
    # activations and logits are per device; the weights are split four ways plus the gathered layers
    assert four.activations_gib == full.activations_gib and four.logits_gib == full.logits_gib
    assert full.weights_gib / 4 < four.weights_gib < full.weights_gib / 2
    assert four.trainable_gib == pytest.approx(full.trainable_gib / 4)
    assert choose_strategy("auto", 4, full.peak_gib, four.peak_gib, gpu_memory_gib=80) == "ddp"  # fits: DDP
    assert choose_strategy("auto", 4, full.peak_gib, four.peak_gib, gpu_memory_gib=full.peak_gib - 1) == "fsdp"
    assert choose_strategy("auto", 4, 100.0, 90.0, gpu_memory_gib=80) == "ddp"  # sharding does not help either
    assert choose_strategy("fsdp", 4, 1.0, 1.0, 80) == "fsdp" and choose_strategy("auto", 1, 99.0, None, 80) is None


def test_four_gpus_per_run_divide_steps_and_time_and_multiply_gpu_hours(write_spec):
    gpu = resolve_gpu("H100")
    # 100 epochs: training long enough that the plan's 0.1 s rounding is no part of the comparison
    one = make_plan(write_spec(training={"epochs": 100}), gpu=gpu).estimates["tiny_r4"]
    plan = make_plan(write_spec(resources={"gpus_per_run": 4}, training={"epochs": 100}), gpu=gpu)
    four = plan.estimates["tiny_r4"]
    assert (one.processes, four.processes) == (1, 4) and four.strategy is Strategy.DDP
    assert one.steps == 4000 and four.steps == 1000  # 100 × 320 examples / (8 × 4) per optimizer step
    assert (one.effective_batch, four.effective_batch) == (8, 32)
    assert four.peak_memory_gib == one.peak_memory_gib  # DDP: the whole model on each device
    assert "DDP: the whole model on each device" in four.memory_source
    startup = 60.0  # assumed on both (no history)
    assert four.seconds - startup == pytest.approx((one.seconds - startup) / (4 * SCALING_EFFICIENCY), rel=1e-2)
    assert four.gpu_hours == pytest.approx(four.seconds * 4 / 3600, abs=1e-4)
    assert "4 processes at 90% scaling efficiency (assumed)" in four.time_source
    md = render_plan_md(plan)
    assert "distributed: 4 processes per run (torchrun" in md
    assert one.memory_source == "simulated: tunelab's training step"  # plan.md names where memory comes from
    assert "simulated: tunelab's training step, DDP: the whole model on each device" in md
    assert "| tiny_r4 | 8 × 1 × 4 = 32 | ddp |" in md and "GPU-h = time × processes" in md


def test_cpu_plan_with_two_processes_says_gloo(write_spec):
    plan = make_plan(write_spec(resources={"nproc_per_run": 2}))
    e = plan.estimates["tiny_r4"]
    assert plan.recipe.startswith("distributed: 2 processes per run (torchrun over gloo on CPU: DDP")
    assert e.processes == 2 and e.steps == 20 and e.effective_batch == 16 and e.gpu_hours is None


def test_collectives_on_a_single_process_are_the_values_themselves():
    from tunelab.train.distributed import agree, all_reduce, world

    assert world().size == 1 and world().is_main
    assert all_reduce([3.0, 4.0]) == [3.0, 4.0] and agree(True) and not agree(False)
