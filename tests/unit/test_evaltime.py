"""Evaluation's predicted time (forecast/evaltime.py) against figures worked out by hand from the stated cost
model — on a CPU a decode batch holds two batch sizes of rows, longest first, each prefill group (cut by length, one
more group costing 33 prompt tokens) prefills its rows left-padded to its longest prompt, and the batch decodes
until its longest answer at (fixed + per row × rows) per step —, the source ladder (history of the same model and task > probe >
assumed), the history's generation table (ledger/generation.py) and the Slurm limits made from a prediction."""

from __future__ import annotations

import sqlite3

import pytest

from tunelab.catalog import KNOWN_MODELS
from tunelab.forecast.evaltime import (
    ASSUMED_CPU_BANDWIDTH_GBS,
    ASSUMED_LAYER_STEP_S,
    EVAL_TIME_MARGINS,
    SAMPLE_OVERHEAD_S,
    EvalSource,
    eval_time_limit,
    predict_eval_time,
)
from tunelab.host.machine import cpu_model
from tunelab.ledger import generation
from tunelab.ledger.generation import GenerationOrigin, GenerationRow
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.probe import GenerationPoint, GenerationSpeed, ProbeResult
from tunelab.spec.evaluation import Engine

MODEL = "qwen2.5-0.5b"  # a catalog model: its architecture is known without a directory
ANOTHER_CPU = "a CPU this machine is not"  # host/machine.py: rows of another CPU's model price no plan here


def probed(model: str = MODEL, device: str = "cpu", cpu: str | None = None) -> GenerationRow:
    return GenerationRow(key=f"probe:{model}", origin=GenerationOrigin.PROBED, model_path=model, device=device,
                         cpu_threads=2, cpu_model=cpu, prefill_tokens_per_s=1000.0, decode_fixed_s=0.01, decode_row_s=0.002,
                         recorded_at="2026-01-01T00:00:00")


def measured(task: str = "caps", device: str | None = "cpu", wall: float = 2.0, concurrent: int = 2,
             cpu: str | None = None) -> GenerationRow:
    return GenerationRow(key=f"eval:{task}:{device}", origin=GenerationOrigin.MEASURED, model_path=MODEL,
                         device=device, cpu_model=cpu, task=task, batch_size=5, samples=10, prompt_tokens=200, generated_tokens=30,
                         wall_s=wall, concurrent=concurrent, recorded_at="2026-01-02T00:00:00")


def test_probed_speed_priced_batch_by_batch():
    got = predict_eval_time(model=MODEL, gpu=None, samples=5, prompt_tokens=[10, 20, 30, 40, 50],
                            answer_tokens=[3, 1, 5, 0, 2], max_tokens=4, batch_size=2, generation=[probed()])
    # answers + end of turn, at most 4: [4, 2, 4, 1, 3]; decode batches of 2 × 2 rows, longest first: [50,40,30,20]
    # and [10]; the first's prefill groups (batchcut.py, at most 2 rows, a group costing 33 tokens): [50,40] [30,20]
    # (100 + 60 + 66 against [50] [40,30] [20]: 50 + 80 + 20 + 99, and every other split)
    # prefill: 2×50/1000 + 2×30/1000 + 1×10/1000 = 0.17
    # decode: 4 steps (its longest answer) × (0.01 + 4×0.002) + 4 × (0.01 + 0.002) = 0.12
    # the evaluator's own work: 5 samples × 15 ms = 0.075
    assert SAMPLE_OVERHEAD_S == 0.015
    assert got.source == EvalSource.PROBED and "probed on cpu" in got.detail
    assert got.prefill_s == pytest.approx(0.17) and got.generation_s == pytest.approx(0.12)
    assert got.overhead_s == pytest.approx(0.075)
    assert got.seconds == pytest.approx(0.365) and got.decode_steps == 8 and got.batches == 2
    # the worst case decodes 4 steps in every batch: here the same
    assert got.upper_s == pytest.approx(0.17 + 0.12 + 0.075)


def test_a_long_prompt_is_prefilled_in_a_group_of_its_own_and_decoded_with_the_rest():
    got = predict_eval_time(model=MODEL, gpu=None, samples=16, prompt_tokens=[400] + [50] * 15, max_tokens=2,
                            batch_size=16, generation=[probed()])
    # a group costs 33 tokens: [400] [50 × 15] (400 + 750 + 66 against 16 × 400 + 33); one decode batch of 16
    assert got.batches == 1 and got.prefill_s == pytest.approx((400 + 15 * 50) / 1000)
    assert got.generation_s == pytest.approx(2 * (0.01 + 16 * 0.002))
    on_gpu = predict_eval_time(model=MODEL, gpu=None, samples=16, prompt_tokens=[400] + [50] * 15, max_tokens=2,
                               batch_size=8, generation=[probed()], engine=Engine.VLLM)
    assert on_gpu.batches == 2 and on_gpu.prefill_s == pytest.approx((8 * 400 + 8 * 50) / 1000)  # by rows only


def test_unknown_answers_run_to_max_tokens_and_short_prompt_lists_continue_with_their_mean():
    got = predict_eval_time(model=MODEL, gpu=None, samples=4, prompt_tokens=[10, 30], max_tokens=5, batch_size=4,
                            generation=[probed()])
    # prompts [10, 30, 20, 20]: one batch padded to 30 → 4×30/1000; 5 steps × (0.01 + 4×0.002)
    assert got.prefill_s == pytest.approx(0.12) and got.generation_s == pytest.approx(0.09)
    assert got.seconds == got.upper_s == pytest.approx(0.12 + 0.09 + 4 * 0.015)


def test_history_of_the_same_model_and_task_calibrates_the_speed_and_gives_the_lengths():
    rows = [probed(), measured()]
    # the past evaluation: 10 rows of 20 prompt tokens at a batch size of 5, 3 tokens generated each (30 / 10), alone
    # it took 2.0 s / 2 tasks at once = 1.0 s; the probed speed prices it as one decode batch of 10 rows in two
    # prefill groups: 10×20/1000 + 3 × (0.01 + 10×0.002) + 10 × 0.015 = 0.44 s, so every part takes 1.0 / 0.44 × as long
    ratio = 1.0 / 0.44
    same = predict_eval_time(model=MODEL, gpu=None, samples=10, prompt_tokens=[20] * 10, answer_tokens=[9] * 10,
                             max_tokens=8, batch_size=5, task="caps", generation=rows)
    assert same.source == EvalSource.HISTORY and "1 evaluation(s)" in same.detail and "×2.27" in same.detail
    assert same.seconds == pytest.approx(1.0)  # the measured workload again: the measured time
    assert same.decode_steps == 3  # 3 in its one decode batch, the measured lengths, not the references' 9 + 1
    double = predict_eval_time(model=MODEL, gpu=None, samples=20, prompt_tokens=[20] * 20, max_tokens=8,
                               batch_size=5, task="caps", generation=rows)
    assert double.seconds == pytest.approx(2.0)
    # the worst case: 8 steps in each of its 2 decode batches at the calibrated speed
    assert double.upper_s == pytest.approx((2 * (0.2 + 8 * 0.03) + 20 * 0.015) * ratio, rel=1e-3)


def test_history_counts_only_the_same_task_and_device():
    other_task = predict_eval_time(model=MODEL, gpu=None, samples=10, prompt_tokens=[20] * 10, max_tokens=8,
                                   batch_size=5, task="other", generation=[probed(), measured()])
    assert other_task.source == EvalSource.PROBED
    on_gpu = predict_eval_time(model=MODEL, gpu=None, samples=10, prompt_tokens=[20] * 10, max_tokens=8,
                               batch_size=5, task="caps", generation=[probed(), measured(device="NVIDIA H100")])
    assert on_gpu.source == EvalSource.PROBED
    no_task = predict_eval_time(model=MODEL, gpu=None, samples=10, prompt_tokens=[20] * 10, max_tokens=8,
                                batch_size=5, generation=[probed(), measured()])
    assert no_task.source == EvalSource.PROBED  # without the task's name no history can be its own
    other_cpu = predict_eval_time(model=MODEL, gpu=None, samples=10, prompt_tokens=[20] * 10, max_tokens=8,
                                  batch_size=5, task="caps", generation=[probed(), measured(cpu=ANOTHER_CPU)])
    assert other_cpu.source == EvalSource.PROBED  # timed on another CPU: not this one's speed
    this_cpu = predict_eval_time(model=MODEL, gpu=None, samples=10, prompt_tokens=[20] * 10, max_tokens=8,
                                 batch_size=5, task="caps", generation=[probed(), measured(cpu=cpu_model())])
    assert this_cpu.source == EvalSource.HISTORY


def test_a_probe_of_another_model_or_device_is_not_used():
    arch = KNOWN_MODELS[MODEL]
    got = predict_eval_time(model=MODEL, gpu=None, samples=2, prompt_tokens=[100, 100], max_tokens=10, batch_size=2,
                            generation=[probed(model="qwen3-0.6b"), probed(device="NVIDIA H100 80GB HBM3"),
                                        probed(cpu=ANOTHER_CPU)])
    # a matmul timed here × an assumed efficiency, bandwidth and per-layer cost: assumed, not a timing of the
    # evaluation (issue 54: it was labelled timed, with a measurement's narrower margin); the words keep what was timed
    assert got.source == EvalSource.ASSUMED and "FLOPs" in got.detail and "timed here" in got.detail
    assert got.detail.startswith("assumed: FLOPs") and EVAL_TIME_MARGINS[got.source] == 3.0
    # FLOPs model on a CPU: 2N FLOPs per token at the rate timed on this CPU (a matmul at the model's hidden size,
    # cached: the same figure the prediction read) × the share a model reaches; a decode step reads 4N bytes
    # (fp32) and runs the loop's own work per layer
    from tunelab.forecast.cpuspeed import MATMUL_EFFICIENCY, cpu_flops

    rate = cpu_flops(arch.hidden, None) * MATMUL_EFFICIENCY
    assert f"{rate / 1e9:,.1f} GFLOP/s" in got.detail
    per_token = 2 * arch.parameters / rate
    fixed = 4 * arch.parameters / (ASSUMED_CPU_BANDWIDTH_GBS * 1e9) + arch.layers * ASSUMED_LAYER_STEP_S
    assert got.prefill_s == pytest.approx(200 * per_token, rel=1e-3)
    assert got.generation_s == pytest.approx(10 * (fixed + 2 * per_token), rel=1e-3)


def test_assumed_from_a_training_step_of_the_model_and_its_load_from_the_start_up():
    arch = KNOWN_MODELS[MODEL]
    row = HistoryRun(key="r", source="tunelab", origin="measured", run="r1", device="cpu", layers=arch.layers,
                     hidden=arch.hidden, parameters=arch.parameters, tokens_per_s=300.0, per_token_s=0.003,
                     step_fixed_s=0.3, startup_s=12.0)
    got = predict_eval_time(model=MODEL, gpu=None, samples=3, prompt_tokens=[50, 50, 50], answer_tokens=[4, 4, 4],
                            max_tokens=16, batch_size=4, history=[row], generation=[])
    # a forward is a third of a training step: 0.001 s per token, 0.1 s fixed; one batch of 3 rows
    assert got.source == EvalSource.ASSUMED and "assumed from training" in got.detail
    assert got.prefill_s == pytest.approx(150 * 0.001) and got.generation_s == pytest.approx(5 * (0.1 + 3 * 0.001))
    assert got.load_s == 12.0 and got.total_s == pytest.approx(12.0 + got.seconds)


def test_fit_separates_fixed_and_per_row_decode_cost():
    points = [GenerationPoint(batch=1, prompt_tokens=128, new_tokens=16, prefill_s=0.01, total_s=0.16),
              GenerationPoint(batch=16, prompt_tokens=128, new_tokens=16, prefill_s=0.1, total_s=0.475)]
    speed = GenerationSpeed.fit(points)
    # steps: (0.16 − 0.01)/15 = 0.01 at 1 row, (0.475 − 0.1)/15 = 0.025 at 16 → 0.001 per row, 0.009 fixed
    assert speed.decode_row_s == pytest.approx(0.001) and speed.decode_fixed_s == pytest.approx(0.009)
    assert speed.prefill_tokens_per_s == pytest.approx(16 * 128 / 0.1)
    assert speed.decode_tokens_per_s(16) == pytest.approx(16 / 0.025)
    again = ProbeResult.from_json(ProbeResult(
        micro_batch=1, points=[], tokens_per_s=1.0, per_token_s=None, fixed_s=None, peak_memory_gib=None,
        memory_kind=None, device="cpu", cpu_threads=1, generation=speed).to_json())
    assert again.generation == speed  # the probe's results.json carries it


def test_eval_time_limit_is_the_worst_case_times_the_margin_of_its_source():
    assert eval_time_limit(10.0, EvalSource.HISTORY) == "00:15:00"  # 10 × 1.5 + 300 s → 15 min, rounded up to 15
    assert eval_time_limit(1000.0, EvalSource.HISTORY) == "00:30:00"  # 1500 + 300 = 1800 s
    assert eval_time_limit(3000.0, EvalSource.HISTORY) == "01:30:00"  # 4500 + 300 = 4800 s = 80 min → 90
    assert eval_time_limit(3000.0, EvalSource.PROBED) == "01:45:00"  # 6000 + 300 = 6300 s = 105 min
    assert eval_time_limit(3000.0, EvalSource.ASSUMED) == "02:45:00"  # 9000 + 300 = 9300 s = 155 min → 165


def test_generation_table_round_trip_and_an_old_history_file_gains_it(tmp_path):
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as conn:  # a history file from before the generation table
        conn.execute("CREATE TABLE history (key TEXT PRIMARY KEY, source TEXT NOT NULL)")
        conn.execute("INSERT INTO history VALUES ('old', 'tunelab')")
    generation.record([probed(), measured()], path)
    generation.record([measured(wall=3.0)], path)  # the same evaluation again replaces its row
    rows = generation.load(path)
    assert [(r.origin, r.wall_s) for r in rows] == [(GenerationOrigin.PROBED, None), (GenerationOrigin.MEASURED, 3.0)]
    assert rows[0].speed() == GenerationSpeed(prefill_tokens_per_s=1000.0, decode_fixed_s=0.01, decode_row_s=0.002)
    assert rows[1].wall_share_s() == 1.5
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT key FROM history").fetchall() == [("old",)]


def _expected_limit(upper_s: float) -> str:
    """The rule worked by hand for an assumed speed: × 3 + 5 min, rounded up to a quarter hour."""
    quarters = -(-(upper_s * 3 + 300) // 900)
    minutes = int(quarters * 15)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def test_slurm_evaluation_and_node_jobs_take_their_limit_from_the_prediction(write_spec, tmp_path, monkeypatch):
    from tunelab.execute.slurm_jobs import parse_time_limit, train_time_limit
    from tunelab.execute.slurm_pack import pack_time_limit
    from tunelab.scaffold.write import scaffold

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    slurm = {"executor": "slurm", "gpus_per_run": 0}
    plan = scaffold(write_spec(factors={"lora_rank": [4]}, resources={**slurm, "slurm": {"pack": "node"}}))
    run, control = plan.runs[0], plan.controls[0]
    for cfg in (run, control):
        est = cfg.estimate
        assert est is not None and est.eval_seconds and est.eval_upper_s and est.eval_upper_s > est.eval_seconds
        assert est.eval_source == "assumed" and est.eval_slurm_time_limit == _expected_limit(est.eval_upper_s)
        assert f"#SBATCH --time={est.eval_slurm_time_limit}\n" in (cfg.run_dir / "eval.sbatch").read_text()
    assert run.estimate is not None and run.estimate.eval_slurm_time_limit != "01:00:00"
    # a node job: its runs' training limits placed on the node, plus its longest evaluation's limit
    train = parse_time_limit(train_time_limit(run)[0])
    assert parse_time_limit(pack_time_limit([run])) == train + parse_time_limit(run.estimate.eval_slurm_time_limit)

    own = scaffold(write_spec(factors={"lora_rank": [4]},
                              resources={**slurm, "slurm": {"eval_time_limit": "02:00:00"}}))
    assert "#SBATCH --time=02:00:00\n" in (own.controls[0].run_dir / "eval.sbatch").read_text()  # the user's wins
