"""The spec's `eval:` section: which tasks evaluate every chosen checkpoint and control. A task is a built-in or a
user's inspect-ai task file; tunelab supplies the model, formatted exactly as in training."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tunelab.spec.base import Slug, _Strict

BUILTIN_TASKS = ("exact_match", "includes", "choice", "numeric")
# The built-ins that tunelab's own loop evaluates on the HF engine (evaluate/batched.py): one greedy generate() (or,
# choice, each option's continuation scored) and a scorer of evaluate/tasks.py, so every prompt is known before the
# first batch. Task files and graders go through inspect-ai's per-sample loop; which loop a target × task takes is
# evaluation_loop's rule, by which the evaluator routes and the plan prices it (forecast/evaltime.py).
BATCHED_BUILTINS = frozenset({"exact_match", "includes", "numeric", "choice"})
SplitName = Literal["train", "validation", "test"]
VLLM_PYTHON_ENV = "TUNELAB_VLLM_PYTHON"  # an interpreter with vLLM, when eval.vllm names none


class GraderSpec(_Strict):
    """A local HF model directory that grades a task file's model-graded scorers (through the tunelab provider)."""

    path: str = Field(description="The grader's HF model directory (config.json; relative to the spec file).")
    max_tokens: int = Field(256, ge=1, description="The most tokens of one grading answer.")


class TaskSpec(_Strict):
    """One evaluation task: a built-in on a dataset split, or an inspect-ai task file."""

    name: Slug = Field(description="Name in results and the report; a built-in's name when `builtin`/`file` are unset.")
    builtin: Literal["exact_match", "includes", "choice", "numeric"] | None = Field(
        None, description="exact_match / includes (case-sensitive), choice (probabilities of the answer options: "
        "accuracy, balanced accuracy, F1, ECE, Brier, AUC), numeric (MAE, RMSE, R², parse rate).")
    file: str | None = Field(None, description="A user's inspect-ai task file (relative to the spec file).")
    task: str | None = Field(None, description="file: the @task function to use (default: the only one).")
    args: dict[str, Any] = Field(default_factory=dict, description="file: keyword arguments of the @task function.")
    dataset: str | None = Field(None, description="Built-ins: a dataset of `datasets` (default: the run's own).")
    split: SplitName = Field("test", description="Built-ins: the split evaluated.")
    options: list[str] | None = Field(
        None, description="choice: the answer options (default: the distinct answers of the evaluated split).")
    prompt: str | None = Field(
        None, description="A prompt template for this task ('{input}' = the sample's input); default: the run's own.")
    max_tokens: int | None = Field(None, ge=1, description="Default: eval.max_tokens.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N samples; default: eval.limit.")
    grader: GraderSpec | str | None = Field(
        None, description="file: the model bound to inspect's `grader` role (model_graded_fact/qa grade with it): "
        "{path: DIR} (a local HF model) or an inspect model string 'provider/model'. Default: the model under "
        "evaluation grades its own answers.")

    @field_validator("grader")
    @classmethod
    def _model_string(cls, v: GraderSpec | str | None) -> GraderSpec | str | None:
        if isinstance(v, str) and "/" not in v.strip("/"):
            raise ValueError(f"grader {v!r}: give an inspect model string 'provider/model' or {{path: DIR}}")
        return v

    @model_validator(mode="after")
    def _builtin_or_file(self) -> TaskSpec:
        if self.file and self.builtin:
            raise ValueError(f"task '{self.name}': give builtin or file, not both")
        if not self.file and self.builtin is None:
            if self.name not in BUILTIN_TASKS:
                raise ValueError(f"task '{self.name}': not a built-in ({', '.join(BUILTIN_TASKS)}); "
                                 "set builtin: or file:")
            self.builtin = self.name  # type: ignore[assignment]
        if self.file is None and (self.task or self.args or self.grader):
            raise ValueError(f"task '{self.name}': task:, args: and grader: belong to a task file (file:)")
        if self.options is not None and self.builtin != "choice":
            raise ValueError(f"task '{self.name}': options: is for the choice built-in")
        return self


EpochChoice = Literal["last", "all", "stages"] | list[int]
EngineChoice = Literal["auto", "hf", "vllm"]


class Engine(StrEnum):
    """What generates an evaluation's answers (eval.engine; evaluate/engine.py resolves auto)."""

    AUTO = "auto"
    HF = "hf"
    VLLM = "vllm"


class VllmSpec(_Strict):
    """Where vLLM lives and how its server is sized (evaluation.engine: vllm). tunelab starts one server per base
    model with this interpreter (or uses the running server at `url`) and talks to it over HTTP."""

    python: str | None = Field(
        None, description="The interpreter of an environment with vLLM (e.g. .venv-vllm/bin/python made by "
        "scripts/vllm-env); default: $TUNELAB_VLLM_PYTHON, else this environment's when vllm imports here.")
    url: str | None = Field(
        None, description="A running vLLM server of the sweep's one base model (http://host:port/v1): tunelab "
        "starts none; start it as tunelab would (docs/evaluation.md: LoRA at runtime, the pass-through chat template).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM's share of each GPU's memory.")
    max_loras: int | None = Field(
        None, ge=1, description="Adapters resident (and evaluated) at once; default: every adapter of the base, "
        "at most 16.")
    max_cpu_loras: int | None = Field(None, ge=1, description="Adapters cached in host memory; default: every "
                                      "adapter of the base.")
    start_timeout_s: int = Field(600, ge=1, description="How long a server may take to answer its health check.")

    def named_python(self) -> str | None:
        """The vLLM interpreter named for this spec: `python`, else $TUNELAB_VLLM_PYTHON (None: neither)."""
        return self.python or os.environ.get(VLLM_PYTHON_ENV) or None

    def named(self) -> bool:
        """A vLLM is named for this spec (`url`, or an interpreter by `named_python`): the one rule by which the plan
        prices vLLM and the evaluation finds it, so the two never disagree."""
        return bool(self.url or self.named_python())


class EvalSpec(_Strict):
    """How fine-tuned checkpoints, controls and eval-only models are evaluated (inspect-ai)."""

    tasks: list[TaskSpec] = Field(default_factory=list, description="Tasks; default: one built-in `task` on `split`.")
    task: Literal["exact_match", "includes", "choice", "numeric"] = Field(
        "exact_match", description="Shorthand for one built-in task on the run's dataset, when `tasks` is unset.")
    split: SplitName = Field("test", description="The split of the shorthand task.")
    max_tokens: int = Field(16, ge=1)
    epochs: EpochChoice = Field("last", description="Checkpoints to evaluate: last, all, stages (the last of each stage; "
                                  "the default of a staged run), or a list of epochs (0-based, counted across stages).")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N examples.")
    engine: EngineChoice = Field(
        "auto", description="What generates: hf (transformers + PEFT, the tunelab provider), vllm (one vLLM "
        "server per base model, every checkpoint a LoRA adapter on it), auto (vllm where vLLM is installed or "
        "named in `vllm:` and a GPU is visible, else hf). `tunelab eval --engine` overrides it.")
    vllm: VllmSpec = Field(default_factory=VllmSpec, description="engine vllm: where vLLM lives, its server's sizes.")

    @field_validator("tasks", mode="before")
    @classmethod
    def _names_as_tasks(cls, v: Any) -> Any:
        # `- exact_match` is short for `- {name: exact_match}`.
        return [{"name": t} if isinstance(t, str) else t for t in v] if isinstance(v, list) else v

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: EpochChoice) -> EpochChoice:
        if isinstance(v, list):
            if not v or any(e < 0 for e in v):
                raise ValueError("a list of epochs must be non-empty, each 0 or more")
            return sorted(set(v))
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> EvalSpec:
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate task name(s) {dupes}")
        return self

    def planned_engine(self, gpu: bool) -> Engine:
        """The engine a plan prices: vllm when asked, or auto on a GPU with a vLLM named. Whether the node can import
        vllm is decided when the evaluation runs (evaluate/engine.py)."""
        if self.engine == Engine.VLLM or (self.engine == Engine.AUTO and gpu and self.vllm.named()):
            return Engine.VLLM
        return Engine.HF

    def resolved_tasks(self) -> list[TaskSpec]:
        """The tasks to run: `tasks`, or the shorthand `task` on `split`."""
        return self.tasks or [TaskSpec(name=self.task, builtin=self.task, split=self.split)]


class EvalOnlySpec(_Strict):
    """A model this experiment did not train (an adapter or a full checkpoint), evaluated beside the runs."""

    name: Slug = Field(description="Its name in results and the report.")
    path: str = Field(description="A PEFT adapter directory (adapter_config.json) or a full HF model directory.")
    model: str | None = Field(
        None, description="An adapter's base: one of `models` (default: the adapter's base_model_name_or_path "
        "when that is a local directory).")
    prompt: str | None = Field(None, description="Its prompt template; default: the spec's prompt.")


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
