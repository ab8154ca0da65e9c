"""Which sample loop evaluates a target × task: tunelab's own (evaluate/batched.py) or inspect-ai's.

One rule for both sides of a prediction: the evaluator routes each target × task by it, and the plan prices each task's
work per sample by the loop it names. It lives in the spec's layer, below both, reading only the spec and the model
directory. A lone target takes the loop a target in a pass takes. What keeps inspect-ai's loop: a task file, the vLLM
engine, a vision-language model, and `--inspect-loop` / `--one-at-a-time` (unknown at plan time)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tunelab.spec.evaluation import BATCHED_BUILTINS, Engine, TaskSpec


class EvalLoop(StrEnum):
    """The loop that runs a target × task's samples."""

    TUNELAB = "tunelab"  # evaluate/batched.py: every row of a wave answered at once, the task's own scorers
    INSPECT = "inspect"  # inspect-ai's per-sample loop: solver, scorer, event transcript


@dataclass(frozen=True)
class LoopChoice:
    """The loop and why, in words (the plan's detail, the evaluator's line)."""

    loop: EvalLoop
    why: str


def evaluation_loop(task: TaskSpec, *, engine: Engine = Engine.HF, vision: bool = False,
                    inspect_loop: bool = False) -> LoopChoice:
    """The loop of `task` on a target: `engine` the resolved one (hf or vllm), `vision` whether the model is a
    vision-language one (models/vlm.is_vision_language), `inspect_loop` inspect's loop asked for."""
    if inspect_loop:
        return LoopChoice(EvalLoop.INSPECT, "inspect-ai's loop asked for")
    if engine == Engine.VLLM:
        return LoopChoice(EvalLoop.INSPECT, "engine vllm: inspect-ai's loop over the server")
    if task.builtin not in BATCHED_BUILTINS or task.grader is not None:
        return LoopChoice(EvalLoop.INSPECT, "a task file: its own solver and scorer in inspect-ai's loop")
    if vision:
        return LoopChoice(EvalLoop.INSPECT, "a vision-language model: image inputs through inspect-ai's loop")
    return LoopChoice(EvalLoop.TUNELAB, f"the built-in {task.builtin} in tunelab's own loop")
