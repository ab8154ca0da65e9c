"""Built-in tasks on any dataset of the spec and split: exact_match, includes, choice, numeric. Samples are the
conversation training saw minus the answer. Case-sensitive, unlike inspect's own: in tasks such as capitalization the
case is the whole answer."""

from __future__ import annotations

import math
import re

from inspect_ai import Task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import (
    ChatMessage,
    ChatMessageAssistant,
    ChatMessageSystem,
    ChatMessageUser,
    ContentImage,
    ContentText,
    GenerateConfig,
    ModelOutput,
    get_model,
)
from inspect_ai.scorer import CORRECT, INCORRECT, Metric, Score, Scorer, Target, accuracy, scorer, stderr
from inspect_ai.solver import Generate, Solver, TaskState, generate, solver

from tunelab.data.conversation import Example
from tunelab.errors import TunelabError
from tunelab.evaluate import metrics as m
from tunelab.evaluate.provider import TunelabModelAPI
from tunelab.evaluate.task_rows import builtin_rows
from tunelab.rundir.config import RunConfig
from tunelab.spec import TaskSpec

# The metric each built-in's `score` is.
PRIMARY = {"exact_match": "accuracy", "includes": "accuracy", "choice": "accuracy", "numeric": "mae"}
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")
OPTIONS = "options"  # a choice task's metadata key: its options
_MESSAGE = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}


# ---------------------------------------------------------------- samples
def as_chat(example: Example) -> list[ChatMessage]:
    """The prompt as inspect messages; a message's images become ContentImage parts before its text."""
    return [_MESSAGE[msg.role](content=[*(ContentImage(image=p) for p in msg.images), ContentText(text=msg.content)]
                               if msg.images else msg.content) for msg in example.prompt]


def build_samples(examples: list[Example]) -> list[Sample]:
    return [Sample(input=as_chat(e), target=e.answer, id=i, metadata=image_metadata(e)) for i, e in enumerate(examples)]


def image_metadata(example: Example) -> dict | None:
    """An image sample's files (scores.json keeps them, with the answer, for the report); None without images."""
    images = [p if not p.startswith("data:") else "(embedded image)" for m in example.prompt for p in m.images]
    return {"images": images} if images else None


# ---------------------------------------------------------------- exact_match / includes
@scorer(metrics=[accuracy(), stderr()])
def exact_match() -> Scorer:
    """Correct when the stripped completion equals the stripped target, case included."""
    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion.strip()
        ok = any(answer == t.strip() for t in target.target)
        return Score(value=CORRECT if ok else INCORRECT, answer=answer)

    return score


@scorer(metrics=[accuracy(), stderr()])
def includes() -> Scorer:
    """Correct when the (case-sensitive) target appears anywhere in the completion."""
    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion
        ok = any(t.strip() and t.strip() in answer for t in target.target)
        return Score(value=CORRECT if ok else INCORRECT, answer=answer.strip())

    return score


# ---------------------------------------------------------------- choice
@solver
def option_probabilities(options: list[str]) -> Solver:
    """Each option's probability: its summed log-probability after the prompt, normalised over the options."""
    async def solve(state: TaskState, generate: Generate) -> TaskState:
        model = get_model()
        if not isinstance(model.api, TunelabModelAPI):
            raise TunelabError(f"the choice built-in needs the tunelab model provider, not {model}")
        state.output = option_output(str(model), options, model.api.score_continuations(state.messages, options))
        state.messages.append(state.output.message)
        return state

    return solve


def option_output(model: str, options: list[str], logps: list[float]) -> ModelOutput:
    """The answer of a choice sample: the most probable option, every option's probability (its summed
    log-probability, normalised over the options) in the output's metadata. The solver's and tunelab's own loop's."""
    top = max(logps)
    weights = [math.exp(v - top) for v in logps]
    probs = {o: w / sum(weights) for o, w in zip(options, weights)}
    output = ModelOutput.from_content(model=model, content=options[logps.index(top)])
    output.metadata = {"option_probs": probs, "option_logprobs": dict(zip(options, logps))}
    return output


@scorer(metrics=[accuracy()])
def option_choice() -> Scorer:
    """Correct when the most probable option is the target; the probabilities go to the metrics."""
    async def score(state: TaskState, target: Target) -> Score:
        probs = (state.output.metadata or {})["option_probs"]
        pred = max(probs, key=lambda o: probs[o])
        return Score(value=CORRECT if pred == target.text else INCORRECT, answer=pred,
                     metadata={"probs": probs, "target": target.text, "prediction": pred})

    return score


def choice_metrics(n_options: int) -> list[Metric | dict[str, list[Metric]]]:
    """The metrics of a choice task, in the form Task(metrics=...) takes."""
    out: list[Metric | dict[str, list[Metric]]] = [accuracy(), m.balanced_accuracy(), m.macro_f1(), m.ece(), m.brier()]
    return out + [m.roc_auc()] if n_options == 2 else out


# ---------------------------------------------------------------- numeric
def parse_number(text: str) -> float | None:
    """The first number in the text ('1,234.5', '-3', '.5', '2e3'); None when there is none."""
    found = _NUMBER.search(text)
    return float(found.group().replace(",", "")) if found else None


@scorer(metrics=[m.mae(), m.rmse(), m.r2(), m.parse_rate()])
def numeric() -> Scorer:
    """The first number of the completion against the numeric target; correct when equal."""
    async def score(state: TaskState, target: Target) -> Score:
        pred, truth = parse_number(state.output.completion), float(target.text)
        return Score(value=CORRECT if pred == truth else INCORRECT, answer=state.output.completion.strip(),
                     metadata={"prediction": pred, "target": truth})

    return score


def numeric_targets(examples: list[Example], values: list[float]) -> list[Sample]:
    """A numeric task's samples: each row's answer as its number's repr."""
    return [Sample(input=as_chat(e), target=repr(v), id=i, metadata=image_metadata(e))
            for i, (e, v) in enumerate(zip(examples, values))]


# ---------------------------------------------------------------- the Task
def build_builtin_task(cfg: RunConfig, spec: TaskSpec) -> Task:
    """The inspect Task of one built-in task spec on this run's datasets (its rows read and checked by task_rows)."""
    rows = builtin_rows(cfg, spec)
    name = f"{cfg.dataset_named(spec.dataset).name}_{spec.split}"
    config = GenerateConfig(max_tokens=spec.max_tokens or cfg.eval.max_tokens)
    if rows.options is not None:
        # the options in the task's metadata (and so the log's): what the probabilities are over, and what tunelab's
        # own loop (batched.py) scores each sample's continuations against
        return Task(dataset=MemoryDataset(build_samples(rows.examples), name=name),
                    solver=option_probabilities(rows.options), scorer=option_choice(),
                    metrics=choice_metrics(len(rows.options)), config=config, name=spec.name,
                    metadata={OPTIONS: rows.options})
    if rows.values is not None:
        return Task(dataset=MemoryDataset(numeric_targets(rows.examples, rows.values), name=name), solver=generate(),
                    scorer=numeric(), config=config, name=spec.name)
    scorers = {"exact_match": exact_match, "includes": includes}
    return Task(dataset=MemoryDataset(build_samples(rows.examples), name=name), solver=generate(),
                scorer=scorers[spec.builtin](), config=config, name=spec.name)  # type: ignore[index]
