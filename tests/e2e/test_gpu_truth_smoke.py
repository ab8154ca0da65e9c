"""The GPU kit's parts (benchmarks/gpu_truth*.py) that need no run: the README table renderer against medians
worked by hand, the order of rows, their grouping into processes, and which rows a next call measures again.
The kit's CPU form itself (its rows drawn, measured in shared processes, simulated, resumed, kept within its
budget) runs in tests/e2e/test_gpu_lease.py, through scripts/gpu-lease as a lent GPU machine runs it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gpu_truth_grid import Case, cover_cases, take_group, value_order  # noqa: E402
from gpu_truth_records import Errors, KitFile, Measured, ShapeResult, Simulated, readme_table  # noqa: E402


def _row(name: str, status: str = "ok", **errors: float) -> ShapeResult:
    return ShapeResult(name=name, case=2, title=name, arch="Llama-3.2-1B", layers=16, lora_rank=8,
                       lora_targets="all-linear", batch=1, seq_len=1024, packed=False, lengths="long",
                       attention="auto", attention_resolved="sdpa", checkpointing=False, quantize=None,
                       dtype="bfloat16", steps=5, flops_per_token=1.0, estimated_s=1.0, elapsed_s=1.0,
                       measured=Measured(status=status, mfu=errors.pop("mfu", None)), simulated=Simulated(),
                       errors=Errors(**errors), finished_at="2026-01-01T00:00:00+00:00")


def test_readme_table_gives_median_errors_per_term():
    kit = KitFile(gpu="H100-80GB", device="NVIDIA H100 80GB HBM3", bf16_peak_tflops=989, mfu_formula="f",
                  cpu_smoke=False, started_at="2026-01-02T00:00:00+00:00", versions={"torch": "2.13.0"},
                  shapes=[_row("a", allocated=0.02, reserved=-0.10, mfu=0.30, verdict_agrees=True),
                          _row("b", allocated=0.06, reserved=0.04, mfu=0.40),
                          _row("c", allocated=-0.08, mfu=0.50, verdict_agrees=False)])
    table = readme_table(kit)
    # allocated: errors +2, +6, −8 % → median +2 %, |errors| 2, 6, 8 → median 6 %; reserved: −10, +4 → −3 %, 7 %
    assert "| max_memory_allocated | 3 | +2.0 % | 6.0 % | -8.0 % … +6.0 % |" in table
    assert "| max_memory_reserved | 2 | -3.0 % | 7.0 % | -10.0 % … +4.0 % |" in table
    assert "CUDA context" not in table  # a term no row measured gets no row
    assert "verdicts agreeing: 1/2; median MFU 0.400 against 989 TFLOPS" in table


def test_rows_go_by_value_per_second_a_build_paid_once():
    a, b, c = (Case(n, 2, n, "m", 8, 1, 16, value=v) for n, v in (("a", 2.0), ("b", 3.0), ("c", 2.5)))
    # b: 3/50 = 0.060 beats c: 2.5/(10 + 100) = 0.023 and a: 2/110 = 0.018; then c (it pays X's build), then a
    order = value_order([a, b, c], cost={"a": 10, "b": 50, "c": 10}, build={"X": 100, "Y": 0},
                        model_of={"a": "X", "b": "Y", "c": "X"})
    assert [x.name for x in order] == ["b", "c", "a"]
    # with X built already, a and c come first: 2.5/10 and 2/10 beat 3/50
    order = value_order([a, b, c], cost={"a": 10, "b": 50, "c": 10}, build={"X": 0, "Y": 0},
                        model_of={"a": "X", "b": "Y", "c": "X"})
    assert [x.name for x in order] == ["c", "a", "b"]


def _case(name: str, case: int, alone: bool = False) -> Case:
    return Case(name, case, name, "m", 8, 1, 16, alone=alone)


def test_each_case_gets_a_row_first_shared_rows_before_lone_ones_failed_rows_last():
    a1, a2, b1, c1, c2, d1 = (_case("a1", 1), _case("a2", 1), _case("b1", 2, alone=True), _case("c1", 3),
                              _case("c2", 3, alone=True), _case("d1", 4))
    order = [a1, a2, b1, c1, c2, d1]  # as value_order gave them
    # each case's first (a1, b1, c1, d1), shared before alone: a1 c1 d1 b1; then the rest: a2, then c2 (alone)
    assert [c.name for c in cover_cases(order)] == ["a1", "c1", "d1", "b1", "a2", "c2"]
    # c1 failed before: c2 is case 3's first row now, and c1 goes last
    assert [c.name for c in cover_cases(order, failed={"c1"})] == ["a1", "d1", "b1", "c2", "a2", "c1"]


def test_a_group_is_one_process_of_shared_rows_that_fit():
    a, b, c, d = _case("a", 1), _case("b", 2), _case("c", 3), _case("d", 4, alone=True)
    seconds = {"a": 30.0, "b": 20.0, "c": 20.0, "d": 10.0}

    def expected(case: Case, fresh: bool) -> float:
        return seconds[case.name] + (15.0 if fresh else 0.0)  # a process's start: the first row's only

    # a (45 s with the start) + b (20) = 65 ≤ 70; c would make 85
    assert [c.name for c in take_group([a, b, c, d], expected, 70.0)] == ["a", "b"]
    assert [c.name for c in take_group([a, b, c, d], expected, 200.0)] == ["a", "b", "c"]  # d runs alone
    assert [c.name for c in take_group([d, a], expected, 200.0)] == ["d"]


def test_a_failed_row_is_measured_again_an_out_of_memory_one_is_a_result():
    kit = KitFile(gpu=None, device="cpu", bf16_peak_tflops=None, mfu_formula="f", cpu_smoke=True,
                  started_at="2026-01-02T00:00:00+00:00", versions={},
                  shapes=[_row("ran"), _row("oom", status="oom"), _row("failed", status="failed"),
                          _row("skipped", status="skipped")])
    assert kit.finished() == {"ran", "oom"}
