"""A measured peak wins over the simulation only for the same configuration (every memory-relevant field) and only
like with like: an allocated peak replaces the simulated allocated figure, and "fits" still applies the reserved
rule (measured allocated + simulated reserved − allocated + CUDA context)."""

import dataclasses

import pytest

from tunelab.catalog import resolve_architecture, resolve_gpu
from tunelab.estimate.measured import MemoryConfig, measured_peak, measured_requirement
from tunelab.estimate.memory import MemoryEstimate
from tunelab.estimate.peak import MemoryFigure
from tunelab.ledger import history

H100 = resolve_gpu("H100")
ARCH = resolve_architecture("Llama-3.2-1B")
PLANNED = MemoryConfig(lora_targets=frozenset({"q_proj", "v_proj"}), lora_rank=64, gradient_checkpointing=False,
                       quantize="none", dtype="bfloat16", attention="varlen", batch_size=16,
                       tokens_per_microbatch=16 * 2048, packed=True, modules_to_save=frozenset(), lora_dropout=0.0)


def _row(**kw) -> history.HistoryRun:
    """A tunelab run of exactly PLANNED on an H100 (as from_run_dir records it), changed by `kw`."""
    base = dict(key="run", source="tunelab", run="r64_b16", model="Llama-3.2-1B", layers=ARCH.layers,
                hidden=ARCH.hidden, parameters=ARCH.parameters, device="NVIDIA H100 80GB HBM3", processes=1,
                packed=True, batch_size=16, max_seq_len=2048, lora_rank=64, tokens_per_s=1000.0,
                peak_memory_gib=40.0, memory_kind="cuda_max_allocated", lora_targets="v_proj,q_proj",
                dtype="bfloat16", gradient_checkpointing=False, max_tokens_per_microbatch=16 * 2048,
                quantize="none", attention="varlen", modules_to_save="", lora_dropout=0.0)
    return history.HistoryRun(**{**base, **kw})


def _figure(allocated: float, reserved: float, context: float = 0.5) -> MemoryFigure:
    return MemoryFigure(reserved + context, allocated, reserved, context, "simulated: tunelab's training step",
                        MemoryEstimate(0, 0.0, 0, 0.0, 0.0, 0.0, 0.0))


def test_a_row_of_the_same_configuration_is_used():
    row = _row()
    assert measured_peak([row], H100, ARCH, PLANNED) is row  # targets in another order are the same targets


# each memory-relevant field, changed alone in the row: the simulation stands
@pytest.mark.parametrize("change", [
    {"lora_targets": "q_proj,k_proj,v_proj"}, {"lora_rank": 16}, {"gradient_checkpointing": True},
    {"quantize": "4bit"}, {"dtype": "float32"}, {"attention": "sdpa"}, {"batch_size": 8},
    {"max_tokens_per_microbatch": 16 * 1024}, {"packed": False}, {"modules_to_save": "embed_tokens,lm_head"},
    {"lora_dropout": 0.05},
    # and where and how it ran: another GPU, another model, several processes
    {"device": "NVIDIA A100-SXM4-80GB"}, {"parameters": ARCH.parameters + 1}, {"processes": 2},
])
def test_one_differing_field_and_the_row_is_not_used(change):
    assert measured_peak([_row(**change)], H100, ARCH, PLANNED) is None


@pytest.mark.parametrize("field", ["lora_targets", "gradient_checkpointing", "quantize", "dtype", "attention",
                                   "max_tokens_per_microbatch", "modules_to_save", "lora_dropout", "processes"])
def test_a_row_that_did_not_record_a_field_is_not_used(field):
    assert measured_peak([_row(**{field: None})], H100, ARCH, PLANNED) is None


def test_the_planned_configuration_is_read_from_the_training_config():
    from tunelab.estimate.memory import MemoryInputs
    from tunelab.spec import TrainingConfig

    t = TrainingConfig(lora_rank=64, batch_size=16, max_seq_len=2048, packing=True,
                       lora_target_modules=["q_proj", "v_proj"], attention="varlen")
    assert MemoryConfig.planned(t, MemoryInputs(dtype="bfloat16"), 16 * 2048) == PLANNED
    # `auto` stands for the kernel the simulation priced
    auto = TrainingConfig(**{**t.model_dump(), "attention": "auto"})
    assert MemoryConfig.planned(auto, MemoryInputs(dtype="bfloat16", attention="varlen"), 16 * 2048) == PLANNED


def test_an_allocated_peak_replaces_the_simulated_allocated_figure_and_keeps_the_reserved_rule():
    need, source = measured_requirement(_row(peak_memory_gib=40.0), _figure(allocated=38.0, reserved=41.5))
    assert need == pytest.approx(40.0 + (41.5 - 38.0) + 0.5)  # measured + simulated slack + CUDA context
    assert source.startswith("measured: r64_b16 (max_memory_allocated 40.00 GiB, in place of the simulated 38.00)")
    assert "slack 3.50" in source and "simulated alone 42.00" in source


def test_a_reserved_peak_replaces_the_simulated_reserved_figure():
    row = _row(peak_memory_gib=44.0, memory_kind="cuda_max_reserved")
    assert measured_peak([row], H100, ARCH, PLANNED) is row
    need, source = measured_requirement(row, _figure(allocated=38.0, reserved=41.5))
    assert need == pytest.approx(44.0 + 0.5) and "max_memory_reserved 44.00" in source


@pytest.mark.parametrize("kind", ["cuda_max_active", "nvml_used", "host_max_rss"])
def test_a_counter_the_simulation_has_no_figure_for_is_not_used(kind):
    row = _row(memory_kind=kind)
    assert measured_peak([row], H100, ARCH, PLANNED) is None
    assert measured_requirement(row, _figure(38.0, 41.5)) is None


def test_without_a_simulation_there_is_no_slack_to_carry_over():
    analytic = dataclasses.replace(_figure(38.0, 41.5), allocated_gib=None, reserved_gib=None)
    assert measured_requirement(_row(), analytic) is None


def test_the_newest_matching_row_wins_and_an_l40s_is_not_an_l4():
    old, new = _row(key="old", peak_memory_gib=39.0), _row(key="new", peak_memory_gib=41.0)
    assert measured_peak([old, new], H100, ARCH, PLANNED) is new  # history.load orders by recorded_at
    l40s = _row(device="NVIDIA L40S")
    assert measured_peak([l40s], resolve_gpu("L4"), ARCH, PLANNED) is None
    assert measured_peak([l40s], resolve_gpu("L40S"), ARCH, PLANNED) is l40s


def test_a_finished_run_in_the_history_prices_its_own_configuration_and_no_other(write_spec, tmp_path, monkeypatch):
    """End to end: a completed H100 run of tiny r4 (run.yaml + summary.json as the job writes them) is recorded;
    the next plan takes its allocated peak for r4 and keeps the simulation for r8, which differs in rank."""
    from tunelab.estimate.memory import MemoryInputs
    from tunelab.estimate.peak import predict_peak, step_shape
    from tunelab.plan.planner import make_plan
    from tunelab.rundir.summary import Summary

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    spec = write_spec(training={"attention": "sdpa"})
    before = make_plan(spec, gpu=H100)
    cfg = next(c for c in before.runs if c.name == "tiny_r4")
    simulated = before.estimates["tiny_r4"]
    assert simulated.memory_source == "simulated: tunelab's training step"
    finished = cfg.model_copy(update={"estimate": simulated})  # run.yaml as scaffold writes it
    summary = Summary(steps=40, tokens=40 * 216, tokens_per_s=5000.0, peak_memory_gib=0.25,
                      memory_kind="cuda_max_allocated", device="NVIDIA H100 80GB HBM3", world_size=1, dtype="bfloat16")
    row = history.from_run_dir(finished, summary)
    assert (row.attention, row.quantize, row.modules_to_save, row.lora_dropout, row.processes) == (
        "sdpa", "none", "embed_tokens,lm_head", 0.0, 1)
    assert row.max_tokens_per_microbatch == simulated.tokens_per_microbatch
    history.record([row])

    after = make_plan(spec, gpu=H100)
    t = cfg.training
    sim = predict_peak(cfg.model.path, MemoryInputs.of_training(t, "bfloat16"),
                       step_shape(t.batch_size, t.max_seq_len, t.packing, simulated.tokens_per_microbatch // 8))
    e4, e8 = after.estimates["tiny_r4"], after.estimates["tiny_r8"]
    assert e4.memory_source.startswith("measured: tiny_r4 (max_memory_allocated 0.25 GiB")
    assert e4.peak_memory_gib == round(0.25 + (sim.reserved_gib - sim.allocated_gib) + sim.context_gib, 2)
    assert e8.memory_source == "simulated: tunelab's training step"
    assert e8.peak_memory_gib == before.estimates["tiny_r8"].peak_memory_gib


def test_an_older_history_file_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a history from before the memory-relevant columns
        conn.execute("CREATE TABLE history (key TEXT PRIMARY KEY, source TEXT NOT NULL, tokens_per_s REAL, "
                     "recorded_at TEXT)")
        conn.execute("INSERT INTO history VALUES ('old', 'tunelab', 100.0, '2025-01-01')")
    rows = history.load(path)
    assert [(r.key, r.attention, r.quantize, r.processes) for r in rows] == [("old", None, None, None)]
    assert measured_peak(rows, H100, ARCH, PLANNED) is None  # unknown is not the same configuration
