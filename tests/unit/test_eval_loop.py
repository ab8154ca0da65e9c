"""Which sample loop evaluates a target × task (spec/evaluation.py), asked by the evaluator and the plan alike: the
rule for every case, the loop a target alone is routed to (evaluate/passes.lone_loop), and the plan's price per
sample following the same rule, a lone checkpoint and a vision-language model included. (That a lone target's pass
of one answers as inspect-ai's loop does, sample for sample: tests/e2e/test_eval_batched.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.evaluate.passes import lone_loop
from tunelab.evaluate.targets import Target
from tunelab.evaluate.work import TargetWork, WorkItem
from tunelab.spec.evaluation import BUILTIN_TASKS, Engine, EvalLoop, TaskSpec, evaluation_loop

TUNELAB, INSPECT = EvalLoop.TUNELAB, EvalLoop.INSPECT
FILE_TASK = TaskSpec(name="mine", file="mine.py")
VLM_CONFIG = {"model_type": "qwen2_vl", "vision_config": {"depth": 2}}


@pytest.mark.parametrize("builtin", BUILTIN_TASKS)
@pytest.mark.parametrize(("engine", "vision", "inspect_loop", "expected"), [
    (Engine.HF, False, False, TUNELAB),  # a built-in on a text model: tunelab's loop, alone or in a pass
    (Engine.HF, False, True, INSPECT),  # --inspect-loop / --one-at-a-time
    (Engine.VLLM, False, False, INSPECT),  # inspect's provider over the server
    (Engine.HF, True, False, INSPECT),  # image inputs
])
def test_a_builtin_takes_tunelabs_loop_unless_the_engine_the_model_or_the_caller_says_otherwise(
        builtin, engine, vision, inspect_loop, expected):
    chosen = evaluation_loop(TaskSpec(name=builtin), engine=engine, vision=vision, inspect_loop=inspect_loop)
    assert chosen.loop == expected and chosen.why


def test_a_task_file_takes_inspects_loop_whatever_else():
    for engine in (Engine.HF, Engine.VLLM):
        for vision in (False, True):
            assert evaluation_loop(FILE_TASK, engine=engine, vision=vision).loop == INSPECT
    assert "task file" in evaluation_loop(FILE_TASK).why


def model_dir(root: Path, config: dict | None) -> Path:
    root.mkdir()
    if config is not None:
        (root / "config.json").write_text(json.dumps(config))
    return root


def alone(base: Path, *tasks: TaskSpec) -> TargetWork:
    cfg = object()  # lone_loop reads the target's base directory and its tasks only
    target = Target("epoch_0", 0, base, base / "adapter")
    return TargetWork(cfg, target, tuple(WorkItem(cfg, target, t) for t in tasks))  # type: ignore[arg-type]


def test_a_target_alone_takes_the_loop_its_tasks_take_in_a_pass(tmp_path):
    text = model_dir(tmp_path / "text", {"model_type": "llama"})
    vlm = model_dir(tmp_path / "vlm", VLM_CONFIG)
    missing = model_dir(tmp_path / "missing", None)
    exact = TaskSpec(name="exact_match")
    assert lone_loop(alone(text, exact), inspect_loop=False).loop == TUNELAB  # a pass of one
    assert lone_loop(alone(text, FILE_TASK, exact), inspect_loop=False).loop == TUNELAB  # one of its tasks is enough
    assert lone_loop(alone(text, exact), inspect_loop=True).loop == INSPECT
    assert lone_loop(alone(text, FILE_TASK), inspect_loop=False).loop == INSPECT
    assert "vision-language" in lone_loop(alone(vlm, exact), inspect_loop=False).why
    assert lone_loop(alone(vlm, exact), inspect_loop=False).loop == INSPECT
    # no model there: inspect-ai's loop (evaluate_alone), whose load names what is missing, target by target
    assert lone_loop(alone(missing, exact), inspect_loop=False).loop == INSPECT


def test_the_plan_prices_each_task_by_the_loop_the_evaluator_gives_it(tmp_path):
    """One checkpoint (a target alone) of a text model: priced at tunelab's loop; the same run of a vision-language
    model: inspect-ai's; each against predict_eval_time with the loop set by hand."""
    from tunelab.forecast.evalrun import predict_run_eval
    from tunelab.forecast.evaltime import BATCHED_SAMPLE_OVERHEAD_S, SAMPLE_OVERHEAD_S, predict_eval_time
    from tunelab.ledger.generation import GenerationOrigin, GenerationRow
    from tunelab.rundir.config import RunConfig

    rows = tuple((30, 25) for _ in range(10))  # 10 test rows: 30 tokens, the answer from token 25
    vlm = model_dir(tmp_path / "vlm", VLM_CONFIG)

    def priced(model: str, batched: bool) -> tuple[float | None, float]:
        """(the run's evaluation as the plan prices it, the same workload priced by hand in the loop named)."""
        probe = GenerationRow(key=f"probe:{model}", origin=GenerationOrigin.PROBED, model_path=model, device="cpu",
                              prefill_tokens_per_s=1000.0, decode_fixed_s=0.01, decode_row_s=0.002,
                              recorded_at="2026-01-01T00:00:00")
        cfg = RunConfig(name="r", kind="finetune", experiment="e", experiment_dir=str(tmp_path),  # type: ignore[arg-type]
                        model={"name": "m", "path": model}, dataset={"name": "d", "path": str(tmp_path)},
                        training={"epochs": 3}, eval={"max_tokens": 8})
        got = predict_run_eval(cfg, None, lambda c: {"test": rows}, generation=[probe], batch_size=16, errors=[])
        assert got.targets == 1  # eval.epochs last: the checkpoint is the only target of its base
        by_hand = predict_eval_time(model=model, gpu=None, samples=10, prompt_tokens=[25] * 10, answer_tokens=[5] * 10,
                                    max_tokens=8, batch_size=16, generation=[probe], batched=batched)
        return got.raw_seconds, by_hand.seconds

    text, text_batched = priced("qwen2.5-0.5b", True)
    assert text == pytest.approx(text_batched)  # tunelab's loop: ~1 ms a sample
    vision, vision_inspect = priced(str(vlm), False)
    assert vision == pytest.approx(vision_inspect)  # inspect-ai's loop: ~15 ms a sample
    _, vision_batched = priced(str(vlm), True)  # the two loops' prices differ by their work per sample only
    assert vision_inspect - vision_batched == pytest.approx(10 * (SAMPLE_OVERHEAD_S - BATCHED_SAMPLE_OVERHEAD_S),
                                                            abs=2e-3)
