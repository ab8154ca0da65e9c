"""A sweep's evaluation targets, its test rows and tunelab's own per-sample answers, read from the experiment
directory, so the evaluation peers (lmeval.py, inspect_hf.py) evaluate exactly what `tunelab eval` did and their
answers can be compared with tunelab's sample by sample.

Runs in tunelab's interpreter (it uses tunelab's own target selection and row reader: the same checkpoints, rows,
prompt template and system prompt as `tunelab eval`). tunelab's answers are in each target's inspect-ai log,
<run>/eval/<label>/<task>/*.eval (scores.json names it): a sample's first score's `answer` is the completion as the
exact_match scorer compared it (stripped); sample ids are the 0-based row numbers of the split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

EVAL_DIR, SCORES_FILE = "eval", "scores.json"
V = TypeVar("V")  # what is compared per sample: an answer, or a prompt's token ids


@dataclass(frozen=True)
class Target:
    """One set of weights of a sweep: a base model (adapter None) or an adapter on its base."""

    name: str  # the run's directory name (+ "@label" when a run evaluates several epochs)
    base: Path
    adapter: Path | None
    run_dir: Path
    label: str  # tunelab's eval/<label>/ (epoch_N | base | checkpoint)


@dataclass(frozen=True)
class Row:
    """One test sample: tunelab's sample id, the prompt messages (system?, user) and the expected answer."""

    id: int
    messages: list[dict[str, str]]
    target: str


@dataclass(frozen=True)
class EvalJob:
    """What every tool evaluates: the rows, the task name tunelab used, the generation limit."""

    task: str
    rows: list[Row]
    max_tokens: int


def _run_dirs(experiment: Path) -> list[Path]:
    return sorted(p.parent for sub in ("runs", "controls") for p in (experiment / sub).glob("*/run.yaml"))


def sweep_targets(experiment: Path) -> list[Target]:
    """Every target `tunelab eval` evaluates in this experiment (each run's eval.epochs choice; controls: base)."""
    from tunelab.evaluate.targets import select_targets
    from tunelab.rundir.config import load_run_config

    out: list[Target] = []
    for run_dir in _run_dirs(experiment):
        cfg = load_run_config(run_dir)
        chosen = select_targets(cfg)
        for t in chosen:
            name = run_dir.name if len(chosen) == 1 else f"{run_dir.name}@{t.label}"
            out.append(Target(name, Path(t.base_path).resolve(), Path(t.adapter_path).resolve()
                              if t.adapter_path else None, run_dir, t.label))
    return out


def eval_job(run_dir: Path) -> EvalJob:
    """The run's (first) task's rows as tunelab's built-in task builds its samples: read by the run's own row reader
    (prompt template, system prompt), ids = row numbers, limit applied."""
    from tunelab.evaluate.task_rows import task_examples
    from tunelab.rundir.config import load_run_config

    cfg = load_run_config(run_dir)
    spec = cfg.eval.resolved_tasks()[0]
    limit = spec.limit or cfg.eval.limit
    examples = task_examples(cfg, spec, limit)
    rows = [Row(i, [{"role": m.role, "content": m.content} for m in e.prompt], e.answer)
            for i, e in enumerate(examples)]
    return EvalJob(spec.name, rows, spec.max_tokens or cfg.eval.max_tokens)


def tunelab_stops(target: Target) -> list[int]:
    """The token ids where tunelab's provider ends an answer for this target (its run's prompt format: the chat
    template's end-of-turn and the eos), with the base's tokenizer."""
    from transformers import AutoTokenizer

    from tunelab.data.formatting import prompt_format_of
    from tunelab.rundir.config import load_run_config

    tokenizer = AutoTokenizer.from_pretrained(target.base)
    return prompt_format_of(load_run_config(target.run_dir)).stop_token_ids(tokenizer)


def _scores(target: Target, task: str) -> dict:
    path = target.run_dir / EVAL_DIR / target.label / task / SCORES_FILE
    return json.loads(path.read_text())


def _log(target: Target, task: str) -> Path:
    scores = _scores(target, task)
    log = Path(scores["log"])
    return log if log.is_absolute() else target.run_dir / EVAL_DIR / target.label / task / log


def tunelab_answers(targets: list[Target], task: str) -> dict[str, dict[int, str]]:
    """{target: {sample id: answer}}: each sample's first score's answer (the stripped completion it scored)."""
    from inspect_ai.log import read_eval_log

    out: dict[str, dict[int, str]] = {}
    for t in targets:
        log = read_eval_log(str(_log(t, task)))
        answers: dict[int, str] = {}
        for s in log.samples or []:
            first = next(iter(s.scores.values())) if s.scores else None
            answers[int(s.id)] = first.answer if first and first.answer is not None else s.output.completion.strip()
        out[t.name] = answers
    return out


def tunelab_prompts(target: Target, task: str) -> dict[int, list[int]]:
    """{sample id: prompt token ids} as tunelab's provider sent them (the output's metadata): what the peers'
    rendered prompts are checked against."""
    from inspect_ai.log import read_eval_log

    log = read_eval_log(str(_log(target, task)))
    return {int(s.id): list((s.output.metadata or {}).get("prompt_ids") or []) for s in log.samples or []}


def tunelab_accuracy(targets: list[Target], task: str) -> dict[str, float | None]:
    """{target: score} from each target's scores.json (exact_match: accuracy)."""
    return {t.name: _scores(t, task).get("score") for t in targets}


def agreement(ours: dict[str, dict[int, V]], theirs: dict[str, dict[int, V]]) -> dict[str, float]:
    """{target: share of tunelab's samples the peer had identically} (answers or prompt ids; a missing one differs)."""
    out = {}
    for name, answers in ours.items():
        other = theirs.get(name, {})
        same = sum(other.get(i) == a for i, a in answers.items())
        out[name] = same / len(answers) if answers else 0.0
    return out
