"""Plan estimates: measured datasets, history-based time with its source, memory on a GPU target."""

import pytest

from tunelab.catalog import resolve_gpu
from tunelab.forecast.runs import slurm_time_limit
from tunelab.ledger import history
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import make_plan


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch, quiet_planning):
    """Each test starts from its own empty history (other tests in the session add real runs), its plans priced
    as on an idle machine (conftest's quiet_planning): two plans of a test get the same threads and load."""
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


def _hist(**kw) -> history.HistoryRun:
    base = dict(key="k", source="tunelab", model="tiny", layers=2, hidden=128, parameters=444544, device="cpu",
                cpu_threads=None, packed=False, batch_size=8, gradient_accumulation_steps=1, max_seq_len=64,
                lora_rank=8, tokens_per_step=216.0, tokens_per_s=5000.0, steps=40, duration_s=20.0,
                train_time_s=10.0, overhead_s=1.0, startup_s=6.0)
    base.update(kw)
    return history.HistoryRun(**base)


def test_no_history_on_cpu_times_the_shape_here(write_spec):
    """Nothing measured on this CPU: the plan times the run shape's own micro-batches (forecast/cpuspeed.py) and
    prices the run at that speed — a wide interval, and `tunelab probe` named."""
    import re

    plan = make_plan(write_spec())
    e = plan.estimates["tiny_r4"]
    assert e.steps == 40 and e.tokens_per_epoch == 320 * 27
    assert e.time_kind == "timed" and "timed here" in e.time_source and "`tunelab probe`" in e.time_source
    got = re.search(r"micro-batches of (\d+) × (\d+) tokens .* took ([\d.]+) ms each", e.time_source)
    assert got is not None, e.time_source
    batch, seq, ms = int(got[1]), int(got[2]), float(got[3])
    # timed while other work held the cores (the suite's other worker): corrected by the slowdown it says
    slowed = re.search(r"under contention \(others held the cores: up to ×([\d.]+) slower\)", e.time_source)
    factor = float(slowed[1]) if slowed else 1.0
    assert batch == 8 and e.tokens_per_s == pytest.approx(batch * seq / (ms / 1e3) * factor, rel=0.01 + 0.051 / factor)
    # its interval: the timed kind's documented width (σ 0.30, assumed), for the steps and the start-up alike
    assert e.time_range is not None and e.time_range.basis.startswith("timed: width σ 0.30 assumed")
    assert "start-up: timed: width σ 0.30 assumed" in e.time_range.basis
    assert "without a time estimate" not in render_plan_md(plan)


def test_a_model_too_large_to_time_is_priced_by_a_timed_matmul_as_a_model_with_its_wider_width(
        write_spec, tiny_model, monkeypatch, tmp_path):
    """Above MAX_TIMED_PARAMETERS (lowered here so that the tiny model is 'too large') the plan times a matrix
    product and prices training at an assumed share of it: one timed constant in a FLOPs model, so kind `model`
    (σ 0.80 assumed, wider than a real timing's 0.60), its source saying what was timed; gradient checkpointing
    divides that speed by the one RECOMPUTE_FACTOR the history's FLOPs model uses. The start-up stays timed (a fresh
    interpreter's imports, timed here)."""
    import re

    from tunelab.catalog import resolve_architecture
    from tunelab.forecast import cpuspeed
    from tunelab.forecast.interval import PRIOR_SIGMA
    from tunelab.forecast.speed import flops_per_token
    from tunelab.rundir.estimate import SourceKind

    monkeypatch.setattr(cpuspeed, "MAX_TIMED_PARAMETERS", 0)
    # its own cache: the product both plans read is the one the first timed (the suite's other worker, timing the
    # same key meanwhile, could replace it in a shared one between the two plans)
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    plain = make_plan(write_spec(factors={"lora_rank": [4]})).estimates["tiny_r4"]
    assert plain.time_kind == "model" and plain.startup_kind == "timed"
    got = re.match(r"model: a 128² matrix product timed here ran at ([\d.,]+) GFLOP/s; training at 50% of it "
                   r"\(assumed\) over the FLOPs per token; `tunelab probe`", plain.time_source)
    assert got is not None, plain.time_source
    gflops = float(got[1].replace(",", ""))
    seq = max(8, plain.tokens_per_microbatch // plain.micro_batch)
    expected = gflops * 1e9 * 0.5 / flops_per_token(resolve_architecture(str(tiny_model)), seq)
    assert plain.tokens_per_s == pytest.approx(expected, rel=0.06 / gflops + 1e-3)  # GFLOP/s printed to 0.1
    assert plain.time_range is not None and "model: width σ 0.80 assumed" in plain.time_range.basis
    assert "start-up: timed: width σ 0.30 assumed" in plain.time_range.basis
    assert PRIOR_SIGMA[SourceKind.MODEL] > PRIOR_SIGMA[SourceKind.TIMED]
    recomputed = make_plan(write_spec(factors={"lora_rank": [4]}, training={"gradient_checkpointing": True}))
    e = recomputed.estimates["tiny_r4"]  # the same product (cached per machine, threads and hidden size)
    assert e.time_kind == "model" and "gradient checkpointing ×1.5 (assumed)" in e.time_source
    assert plain.tokens_per_s / e.tokens_per_s == pytest.approx(1.5, rel=2e-3)


def test_time_from_history_of_the_same_model(write_spec, tiny_model):
    import torch

    from tunelab.catalog import resolve_architecture

    arch = resolve_architecture(tiny_model)
    history.record([_hist(key="a", cpu_threads=torch.get_num_threads(), parameters=arch.parameters)])
    plan = make_plan(write_spec(training={"epochs": 2}))
    e = plan.estimates["tiny_r8"]
    assert e.tokens_per_s == 5000.0 and e.time_source.startswith("history: 1 measured run(s) of this model on cpu")
    train_s = 2 * 320 * 27 / 5000.0
    assert e.seconds == pytest.approx(6.0 + train_s * 1.1, rel=1e-3)  # start-up + training + 10 % overhead
    assert e.slurm_time_limit == "00:15:00"
    # another model on the same device: scaled by parameters (FLOPs per token), and it says so
    history.record([_hist(key="a", cpu_threads=torch.get_num_threads(), parameters=arch.parameters * 2)])
    e = make_plan(write_spec(training={"epochs": 2})).estimates["tiny_r8"]
    assert e.tokens_per_s == 10000.0 and "scaled by FLOPs per token" in e.time_source


def test_gpu_target_uses_memory_model_and_measured_rows_without_history(write_spec, tiny_model):
    import json

    from tunelab.estimate.simulator import StepConfig, StepShape, simulate

    plan = make_plan(write_spec(), gpu=resolve_gpu("H100"))
    e = plan.estimates["tiny_r4"]
    # the simulator's step for the same fields, written out by hand: bf16 on an H100, rank 4 (alpha 2 × rank),
    # every linear layer, embeddings and head trained, sdpa (unpacked); 8 rows padded to the longest, 27 tokens
    sim = simulate(json.loads((tiny_model / "config.json").read_text()),
                   StepConfig(dtype="bfloat16", lora_rank=4, lora_alpha=8.0, lora_targets="all-linear",
                              modules_to_save=("embed_tokens", "lm_head"), attention="sdpa"), StepShape(8, 27))
    assert e.peak_memory_gib == round(sim.required_gib, 2) and e.memory_source.startswith("simulated")
    assert e.gpu_memory_gib == 81559 / 1024  # what nvidia-smi reports, not 80
    # no history on the H100: the step model fitted on the H100's measured rows (forecast/gpustep.py)
    assert e.time_source.startswith("fit of 9 rows measured on H100-80GB") and e.time_kind == "carried"
    assert e.gpu_hours is not None
    md = render_plan_md(plan)
    assert "Target: H100-80GB" in md and "| tiny_r4 | 8 × 1 × 1 = 8 | single process | off | 216 |" in md


def test_slurm_time_limit_rounds_up_with_margin():
    assert slurm_time_limit(600) == "00:30:00"  # 600 × 1.5 + 300 = 1200 s → 20 min → 30
    assert slurm_time_limit(3 * 3600) == "04:45:00"


def test_scaffold_writes_the_estimate_into_run_yaml_and_the_slurm_time_limit(write_spec):
    from tunelab.rundir.config import load_run_config
    from tunelab.scaffold.write import scaffold

    spec = write_spec(resources={"executor": "slurm"})
    scaffold(spec, gpu=resolve_gpu("H100"))
    cfg = load_run_config(spec.parent / "runs" / "tiny_r4")
    assert cfg.estimate is not None and cfg.estimate.steps == 40 and cfg.estimate.slurm_time_limit == "00:15:00"
    sbatch = (spec.parent / "runs" / "tiny_r4" / "job.sbatch").read_text()
    assert "--time=00:15:00" in sbatch and "planner estimate" in sbatch
    # the estimate moving with history is not a change of the run: re-scaffolding is allowed
    (cfg.run_dir / "status.json").write_text('{"state": "completed"}')
    scaffold(spec)


def test_only_comparable_history_rows_time_a_run(write_spec, tiny_model):
    """A measured row of the same model but with gradient checkpointing on (a recomputed forward) does not time
    a run without it; a row that did not record the field still counts."""
    import torch

    from tunelab.catalog import resolve_architecture

    arch = resolve_architecture(tiny_model)
    threads = torch.get_num_threads()
    history.record([_hist(key="ckpt", cpu_threads=threads, parameters=arch.parameters, gradient_checkpointing=True,
                          tokens_per_s=100.0)])
    e = make_plan(write_spec()).estimates["tiny_r8"]
    assert e.seconds is None and e.time_source.startswith("none")
    history.record([_hist(key="unknown", cpu_threads=threads, parameters=arch.parameters, tokens_per_s=5000.0)])
    e = make_plan(write_spec()).estimates["tiny_r8"]
    assert e.tokens_per_s == 5000.0
