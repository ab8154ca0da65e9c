"""The GPU kit (benchmarks/gpu_truth.py) in its CPU form: its rows built from `tunelab models random`, measured
by tunelab's probe in processes of their own, simulated by the planner's simulator, written as typed JSON,
resumed, and kept within its budget. The README table renderer is checked against medians worked by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_truth  # noqa: E402
from gpu_truth_grid import SMOKE_ROWS  # noqa: E402
from gpu_truth_records import Errors, KitFile, Measured, ShapeResult, Simulated, load_kit, readme_table  # noqa: E402

GIB = 2**30


@pytest.mark.slow
def test_cpu_smoke_measures_simulates_and_resumes(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert gpu_truth.main(["--out", str(out), "--cache", str(cache), "--cpu-smoke", "--budget-s", "1200",
                           "--no-peers"]) == 0
    (path,) = out.glob("gpu-cpu-*.json")
    kit = load_kit(path)  # the schema: every record validated, unknown keys refused
    assert path.with_suffix(".md").is_file() and kit.cpu_smoke and kit.device == "cpu"
    rows = {s.name: s for s in kit.shapes}
    assert set(rows) == set(SMOKE_ROWS)

    ran, oom = rows["3-packed-b1-auto"], rows["4-lab-oom-16x2048"]
    built = json.loads((cache / "models" / "Qwen2.5-0.5B-2L" / "tunelab_random.json").read_text())
    params = built["parameters"]  # counted from the tensors written
    assert built["layers"] == 2
    m = ran.measured
    assert m.status == "ok" and m.memory_kind == "host_max_rss" and m.allocated_gib is None
    assert m.rss_peak_gib * GIB > params * 4  # the process held the model in float32 (CPU training)
    assert m.tokens_per_step == 16 and len(m.memory_trace_gib) == ran.steps  # examples past max_seq_len: rows full
    assert m.tokens_per_s > 0 and all(x > 0 for x in m.memory_trace_gib)
    # FLOPs per token (estimate/speed.py): 4N + 3·4·layers·seq·(heads·head_dim)/2, Qwen2.5-0.5B: 14 heads of 64
    assert ran.flops_per_token == 4 * params + 3 * 4 * 2 * 16 * (14 * 64) / 2
    for row in (ran, oom):
        s = row.simulated
        assert s.allocated_gib is not None and s.reserved_gib >= s.allocated_gib, s.source
        assert s.allocated_gib * GIB > params * 2  # at least the bf16 weights the simulated GPU step holds
        assert s.required_gib == pytest.approx(s.reserved_gib + s.context_gib, abs=1e-3)
    assert oom.measured.status == "oom" and "out of memory" in oom.measured.error  # a result, not a crash
    assert oom.measured.rss_peak_gib is None

    capsys.readouterr()
    assert gpu_truth.main(["--out", str(out), "--cache", str(cache), "--cpu-smoke"]) == 0  # resumed: nothing measured again
    said = capsys.readouterr().out
    assert "0 row(s) to measure, 2 already in" in said
    assert load_kit(path).model_dump() == kit.model_dump()
    _peer_row_trained_tunelab_and_said_of_the_peer(out, said)

    # a budget too small for the next row: it is not started, and the run ends cleanly
    assert gpu_truth.main(["--out", str(out), "--cache", str(cache), "--cpu-smoke", "--only", "2-unpacked-1024",
                           "--budget-s", "20", "--no-peers"]) == 0
    assert "2-unpacked-1024: not started" in capsys.readouterr().out
    assert not (out / "logs" / "2-unpacked-1024.log").exists()
    assert "2-unpacked-1024" not in {s.name for s in load_kit(path).shapes}


def _peer_row_trained_tunelab_and_said_of_the_peer(out: Path, said: str) -> None:
    """The peer row (gpu_truth_peers.py) in its CPU form: benchmarks/peers.py's training comparison on 80 words of
    the tiny model, tunelab trained and measured from outside; torchtune beside it where scripts/peer-env made its
    environment, else one line saying so (CI has none)."""
    from gpu_truth_peers import peer_python

    (table,) = out.glob("peers-cpu-*.md")
    assert f"peer row: exit 0; {table}" in said
    rows = {r["tool"]: r for r in json.loads(table.with_suffix(".json").read_text())["training"]}
    ours = rows["tunelab"]
    assert ours["error"] is None and ours["steps"] == 8  # 64 training rows (80 % of 80) in micro-batches of 8
    assert ours["accuracy"] is None  # unscored (--no-score)
    assert 0 < ours["first_step_s"] < ours["wall_s"] and ours["tokens_per_s"] > 0 and ours["peak_gpu_mib"] is None
    text = table.read_text()
    if peer_python({}) is None:
        assert "torchtune could not run: no environment: run scripts/peer-env torchtune" in text
    else:
        assert rows["torchtune"]["error"] is None and "training (tiny): tunelab ÷ torchtune = " in text


def _row(name: str, **errors: float) -> ShapeResult:
    return ShapeResult(name=name, case=2, title=name, arch="Llama-3.2-1B", layers=16, lora_rank=8,
                       lora_targets="all-linear", batch=1, seq_len=1024, packed=False, lengths="long",
                       attention="auto", attention_resolved="sdpa", checkpointing=False, quantize=None,
                       dtype="bfloat16", steps=5, flops_per_token=1.0, estimated_s=1.0, elapsed_s=1.0,
                       measured=Measured(status="ok", mfu=errors.pop("mfu")), simulated=Simulated(),
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
    from gpu_truth_grid import Case, value_order

    a, b, c = (Case(n, 2, n, "m", 8, 1, 16, value=v) for n, v in (("a", 2.0), ("b", 3.0), ("c", 2.5)))
    # b: 3/50 = 0.060 beats c: 2.5/(10 + 100) = 0.023 and a: 2/110 = 0.018; then c (it pays X's build), then a
    order = value_order([a, b, c], cost={"a": 10, "b": 50, "c": 10}, build={"X": 100, "Y": 0},
                        model_of={"a": "X", "b": "Y", "c": "X"})
    assert [x.name for x in order] == ["b", "c", "a"]
    # with X built already, a and c come first: 2.5/10 and 2/10 beat 3/50
    order = value_order([a, b, c], cost={"a": 10, "b": 50, "c": 10}, build={"X": 0, "Y": 0},
                        model_of={"a": "X", "b": "Y", "c": "X"})
    assert [x.name for x in order] == ["c", "a", "b"]
