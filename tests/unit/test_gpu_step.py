"""The GPU step model (forecast/gpustep.py) against the measured H100 rows it ships, by hand figures: a fit of two
rows solved by hand, the least-squares optimality of the nine-row fit, the leave-one-out and interval mechanism on
rows made from known figures, and the plan's speed: the fit on a GPU with no history, the nearest GPU carried by
its peak elsewhere, history replacing both."""

from __future__ import annotations

import json
import math

import pytest

from tunelab.catalog import resolve_architecture, resolve_gpu
from tunelab.errors import TunelabError
from tunelab.forecast.gpustep import (
    AttentionGroup,
    GpuPrior,
    GpuWork,
    RowFile,
    StepPoint,
    adapted_per_layer,
    attention_group,
    committed_priors,
    committed_rows,
    fit_points,
    gpu_step_speed,
    leave_one_out,
    load_rows,
    points_of,
    rms,
)
from tunelab.forecast.speedhistory import speed_from_history
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.estimate import SourceKind

H100 = resolve_gpu("H100")
LLAMA_1B = resolve_architecture("Llama-3.2-1B")
ALL_LINEAR = GpuWork(16, 7, AttentionGroup.PER_SEQUENCE)  # 325 + 16 × (143 + 7 × 27) = 5,637 operators

# Two per-sequence rows of the H100 file, solved by hand (two equations, two unknowns: the fit is exact):
#   t1 = 1024 / 9,196.79 = 0.111343 s (2-unpacked-1024), t2 = 16,384 / 39,608.67 = 0.413647 s (3-packed-b8-auto)
#   c1 = 1024 × 5.144584192e9 / 989e12 = 0.00532665 s, c2 = 16,384 × 5.345910784e9 / 989e12 = 0.0885616 s
#   1/e² = (t2² − t1²) / (c2² − c1²) = (0.171104 − 0.0123973) / (0.00784315 − 0.0000283732) = 20.3085 → e = 0.22190
#   F² = t1² − c1²/e² = 0.0123973 − 20.3085 × 0.0000283732 = 0.0118211 → F = 0.108725 s, f = F / 5,637 operators
HAND_F, HAND_E = 0.108725, 0.22190


def _two_row_prior(spread: float = 0.2) -> GpuPrior:
    rows = committed_rows()[0]
    picked = [r for r in rows.rows if r.name in ("2-unpacked-1024", "3-packed-b8-auto")]
    two = RowFile(**{**rows.model_dump(), "rows": [r.model_dump() for r in picked]})
    return GpuPrior(two, H100, fit_points(points_of(two.rows, 989.0), 989.0), spread)


def test_two_rows_solved_by_hand():
    prior = _two_row_prior()
    assert prior.fit.fixed_s(ALL_LINEAR) == pytest.approx(HAND_F, rel=1e-4)
    assert prior.fit.efficiency == {AttentionGroup.PER_SEQUENCE: pytest.approx(HAND_E, rel=1e-4)}
    # 2-unpacked-4096 predicted: c = 4096 × 5.748563968e9 / 989e12 = 0.023808 s, G = c / e = 0.107291 s,
    # √(0.0118211 + 0.0115114) = 0.152750 s → 4096 / 0.152750 = 26,815 tokens/s (measured 26,608)
    got = gpu_step_speed(LLAMA_1B, H100, 4096, 4096, ALL_LINEAR, priors=(prior,))
    assert got is not None and got.step_s == pytest.approx(0.152750, rel=1e-4)
    assert got.tokens_per_s == pytest.approx(26_815, rel=1e-4)
    assert got.kind is SourceKind.CARRIED and got.spread == 0.2
    assert got.source.startswith("fit of 2 rows measured on H100-80GB (2026-11-26)") and "109 ms fixed (5,637 operators at 19.3 µs" in got.source


def test_micro_batches_checkpointing_and_targets_by_hand():
    prior = (_two_row_prior(),)
    # one 2048-token micro-batch: c = 2048 × 5.345910784e9 / 989e12 = 0.0110702 s, G = 0.0498878 s,
    # √(0.0118211 + 0.00248878) = 0.119624 s → 17,120 tokens/s; four of them a step: four fixed costs, same speed
    one = gpu_step_speed(LLAMA_1B, H100, 2048, 2048, ALL_LINEAR, priors=prior)
    four = gpu_step_speed(LLAMA_1B, H100, 4 * 2048, 2048, ALL_LINEAR, micro_batches=4, priors=prior)
    assert one is not None and four is not None
    assert one.tokens_per_s == pytest.approx(17_120.3, rel=1e-4) and four.step_s == pytest.approx(4 * 0.119624, 1e-4)
    # checkpointing: FLOPs × 1.5 → G = 0.0748317 s, √(0.0118211 + 0.00559978) = 0.131988 s → 15,517 tokens/s
    ckpt = gpu_step_speed(LLAMA_1B, H100, 2048, 2048, ALL_LINEAR, recompute=True, priors=prior)
    assert ckpt is not None and ckpt.tokens_per_s == pytest.approx(15_516.5, rel=1e-4)
    # q_proj,v_proj: 325 + 16 × (143 + 2 × 27) = 3,477 operators, F = 0.108725 × 3,477 / 5,637 = 0.0670634 s;
    # √(F² + 0.0498878²) = 0.0835840 s
    qv = gpu_step_speed(LLAMA_1B, H100, 2048, 2048, GpuWork(16, 2), priors=prior)
    assert qv is not None and qv.step_s == pytest.approx(0.0835840, rel=1e-4)


def test_another_gpu_carries_the_nearest_fit_by_its_peak():
    # an A100 (312 TFLOPS): the H100's F, its FLOPs at the same efficiency of 312: c = 2048 × 5.345910784e9 / 312e12
    # = 0.0350911 s, G = 0.158138 s, √(0.0118211 + 0.0250075) = 0.191908 s → 10,672 tokens/s
    got = gpu_step_speed(LLAMA_1B, resolve_gpu("A100"), 2048, 2048, ALL_LINEAR, priors=(_two_row_prior(),))
    assert got is not None and got.tokens_per_s == pytest.approx(10_671.8, rel=1e-4)
    assert got.kind is SourceKind.MODEL and "carried to A100-80GB by the ratio of their peaks (312 vs 989" in got.source
    unknown = resolve_gpu("H100").__class__("Mystery GPU", 10_000, 0.0, 0.0)  # detected, not in the catalog: no peak
    assert gpu_step_speed(LLAMA_1B, unknown, 2048, 2048, ALL_LINEAR, priors=(_two_row_prior(),)) is None


def test_nine_row_fit_is_the_least_squares_solution():
    """The shipped fit solves the normal equations of t² = f²u² + c²/e_g², each row divided by its t²: the residuals
    1 − Σ_j A_ij x_j are orthogonal to every column A_j (written out here, not taken from the module)."""
    prior = committed_priors()[0]
    assert prior.gpu.name == "H100-80GB" and len(prior.rows.rows) == 9
    fit = prior.fit
    x = [fit.fixed_per_op_s ** 2, fit.efficiency[AttentionGroup.DENSE_MASK] ** -2,
         fit.efficiency[AttentionGroup.PER_SEQUENCE] ** -2]
    columns = []
    for r in prior.rows.rows:
        t = r.tokens_per_step / r.tokens_per_s
        u = 325 + 16 * (143 + 7 * 27)  # every shipped row: 16 layers, all seven linears adapted: 5,637 operators
        c = r.tokens_per_step * {1024: 5_144_584_192, 2048: 5_345_910_784, 4096: 5_748_563_968}[r.seq_len] / 989e12
        dense = r.packed and r.attention == "sdpa"
        columns.append([(u / t) ** 2, (c / t) ** 2 if dense else 0.0, 0.0 if dense else (c / t) ** 2])
    residuals = [1 - sum(a * b for a, b in zip(row, x)) for row in columns]
    for j in range(3):  # zero to rounding (the columns run to ~10⁶: relative to their size)
        assert abs(sum(r * row[j] for r, row in zip(residuals, columns))) < 1e-12 * sum(row[j] for row in columns)
    assert max(abs(r) for r in residuals) > 0.01  # nine rows, three unknowns: not an exact fit (the check bites)
    # and the figures it reaches: every row within ±35 % of its measured tokens/s (in sample), F near 0.1 s
    assert 0.09 < fit.fixed_s(ALL_LINEAR) < 0.12
    assert all(abs(fit.predict(p) / p.step_s - 1) < 0.35 for p in points_of(prior.rows.rows, 989.0))


def test_leave_one_out_on_rows_made_from_known_figures():
    # F = 0.1 s over 5,637 operators, e = 0.25: c = 0.01, 0.02, 0.05 s → t = √(0.01 + (c / 0.25)²) = 0.107703, 0.128062,
    # 0.223607 s: every fit on two of them finds the third exactly
    t = {0.01: 0.107703296, 0.02: 0.128062485, 0.05: 0.223606798}
    points = [StepPoint(f"r{c}", 5637.0, c, s, AttentionGroup.PER_SEQUENCE) for c, s in t.items()]
    assert all(abs(e) < 1e-6 for e in leave_one_out(points, 989.0))
    # the third 10 % slow: the fit on the first two still says 0.223607, so its error is log(1.1) = 0.0953
    slow = points[:2] + [StepPoint("slow", 5637.0, 0.05, 0.223606798 * 1.1, AttentionGroup.PER_SEQUENCE)]
    assert leave_one_out(slow, 989.0)[2] == pytest.approx(math.log(1.1), abs=1e-6)
    assert rms([0.3, -0.4]) == pytest.approx(math.sqrt((0.09 + 0.16) / 2))
    with pytest.raises(ValueError, match="1 rows cannot fit"):
        fit_points(points[:1], 989.0)


def test_attention_groups_and_adapters():
    assert attention_group("sdpa", packed=True) is AttentionGroup.DENSE_MASK
    assert attention_group("eager", packed=False) is AttentionGroup.DENSE_MASK
    assert attention_group("sdpa", packed=False) is AttentionGroup.PER_SEQUENCE
    assert attention_group("varlen", packed=True) is AttentionGroup.PER_SEQUENCE
    assert adapted_per_layer(LLAMA_1B, "all-linear") == 7 and adapted_per_layer(LLAMA_1B, ["q_proj", "v_proj"]) == 2
    assert GpuWork(16, 2).operators == 325 + 16 * (143 + 2 * 27)


def test_plan_speed_uses_the_fit_and_history_replaces_it():
    prior = committed_priors()[0]
    plain = speed_from_history(LLAMA_1B, H100, 2048, 2048, [], work=ALL_LINEAR)
    own = gpu_step_speed(LLAMA_1B, H100, 2048, 2048, ALL_LINEAR)
    assert own is not None and plain.tokens_per_s == own.tokens_per_s and plain.kind is SourceKind.CARRIED
    assert plain.spread == prior.spread and plain.source.startswith("fit of 9 rows measured on H100-80GB")
    row = HistoryRun(key="k", source="tunelab", model="Llama-3.2-1B", layers=16, hidden=2048,
                     parameters=LLAMA_1B.parameters, device="NVIDIA H100 80GB HBM3", packed=True, batch_size=1,
                     gradient_accumulation_steps=1, max_seq_len=2048, lora_rank=8, tokens_per_step=2048.0,
                     tokens_per_s=12_345.0, steps=5)
    measured = speed_from_history(LLAMA_1B, H100, 2048, 2048, [row], work=ALL_LINEAR)
    assert measured.tokens_per_s == 12_345.0 and measured.source.startswith("history")


def test_a_bad_row_file_names_its_file_and_field(tmp_path):
    path = tmp_path / "bad.json"
    doc = json.loads(committed_rows()[0].model_dump_json())
    del doc["rows"][0]["tokens_per_s"]
    path.write_text(json.dumps(doc))
    with pytest.raises(TunelabError) as err:
        load_rows(path)
    assert err.value.file == str(path) and err.value.field == "rows.0.tokens_per_s"


def test_the_kits_table_reports_tokens_per_s_measured_predicted_and_error():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from gpu_truth_grid import gpu_grid
    from gpu_truth_predict import errors, in_fit
    from gpu_truth_records import KitFile, Measured, ShapeResult, Simulated, shapes_table

    cases = {c.name: c for c in gpu_grid()}
    assert in_fit(cases["2-unpacked-4096"], H100) and not in_fit(cases["1-static-8b"], H100)
    assert not in_fit(cases["2-unpacked-4096"], resolve_gpu("A100"))  # the H100's row, not the A100's
    measured = Measured(status="ok", tokens_per_s=26_608.4)
    predicted = Simulated(tokens_per_s=26_815.0, speed_fitted_on_row=True)
    err = errors(measured, predicted)
    assert err.tokens_per_s == 0.0078  # (26,815 − 26,608.4) / 26,608.4 = +0.78 %
    row = ShapeResult(name="2-unpacked-4096", case=2, title="t", arch="Llama-3.2-1B", layers=16, lora_rank=8,
                      lora_targets="all-linear", batch=1, seq_len=4096, packed=False, lengths="long", attention="auto",
                      attention_resolved="sdpa", checkpointing=False, quantize=None, dtype="bfloat16", steps=5,
                      flops_per_token=1.0, estimated_s=1.0, elapsed_s=1.0, measured=measured, simulated=predicted,
                      errors=err, finished_at="2026-01-01T00:00:00+00:00")
    kit = KitFile(gpu="H100-80GB", device="NVIDIA H100 80GB HBM3", bf16_peak_tflops=989, mfu_formula="f",
                  cpu_smoke=False, started_at="2026-01-02T00:00:00+00:00", versions={}, shapes=[row])
    assert "| 26608 / 26815* (+0.8 %) |" in shapes_table(kit)
