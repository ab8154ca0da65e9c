"""lm-eval 0.4.13 (EleutherAI's lm-evaluation-harness, `hf` model) evaluating a sweep's targets, beside `tunelab eval`.

The same rows, prompt and decoding as tunelab's exact_match task (tunelab_answers.eval_job):
- a LOCAL generate_until task (task_dir/<task>.yaml: dataset_path json, data_files = the test rows as JSONL);
  doc_to_text is the user message, the system message (if any) is the task's `description`, which lm-eval's chat
  path makes the system turn; `--apply_chat_template` renders [system?, user] with the model's own tokenizer
  template and the generation prompt: the text tunelab renders (after every run `prompt_ids` encodes the contexts
  lm-eval logged as it encodes them, and the benchmark checks them against tunelab's prompt ids token for token;
  a template that adds a default system turn, as SmolLM2's does, adds it for both);
- greedy (do_sample false), max_gen_toks = tunelab's max_tokens; stop: lm-eval always adds the tokenizer's eos, and
  `until` holds the template's end-of-turn text when it is another token (tunelab stops at both);
- the answer is the generation decoded without special tokens (as tunelab decodes), then a `remove_whitespace`
  filter (strip), then exact_match, case-sensitive: tunelab's exact_match scorer (stripped equality).
Two ways to run it: `commands` (one `lm-eval run` CLI process per target: lm-eval's documented way, one adapter per
process: `--model_args pretrained=BASE,peft=ADAPTER`), or `api_command` (one process, lmeval_sweep.py: lm-eval's
Python API, each base loaded once and its adapters swapped with PEFT's set_adapter). Both write lm-eval's own
results_*.json and samples_<task>_*.jsonl under out/<target>/, which parse_answers/parse_accuracy read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peerlib.measure import installed_version
from peerlib.tunelab_answers import EvalJob, Target

NAME = name = "lm-eval"  # the row's name (module attributes, as a Peer has them)
ENV = env = "lm-eval"  # scripts/peer-env lm-eval
FILTER = "strip"  # the task's one filter: its name is the suffix of the metric key ("exact_match,strip")
SWEEP_SCRIPT = Path(__file__).with_name("lmeval_sweep.py")


def version(python: Path) -> str:
    """The installed lm-eval version, as the peer's interpreter reports it."""
    return installed_version(python, "lm_eval")


def _stops(bases: list[Path]) -> list[str]:
    """The end-of-turn text of each base's chat template where it is not already the eos (lm-eval adds eos)."""
    from transformers import AutoTokenizer

    from tunelab.data.formatting import end_of_turn_text

    stops: list[str] = []
    for base in dict.fromkeys(bases):
        tok = AutoTokenizer.from_pretrained(base)
        eot = end_of_turn_text(tok)
        if eot and eot != tok.eos_token and eot not in stops:
            stops.append(eot)
    return stops


def task_name(job: EvalJob) -> str:
    return f"tunelab_{job.task}"


def write_task(task_dir: Path, job: EvalJob, bases: list[Path]) -> str:
    """Write the local lm-eval task (rows JSONL + YAML) for these rows; return its name (for --tasks)."""
    import yaml

    task_dir.mkdir(parents=True, exist_ok=True)
    systems = {m["content"] for r in job.rows for m in r.messages if m["role"] == "system"}
    if len(systems) > 1 or any([m["role"] for m in r.messages] not in (["user"], ["system", "user"])
                               for r in job.rows):
        raise ValueError("lm-eval's chat path takes one system message for the whole task and one user turn")
    data = task_dir / "test.jsonl"
    data.write_text("".join(json.dumps({"id": r.id, "prompt": r.messages[-1]["content"], "target": r.target}) + "\n"
                            for r in job.rows))
    name = task_name(job)
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{target}}",
        "target_delimiter": "",
        "generation_kwargs": {"until": _stops(bases), "do_sample": False, "max_gen_toks": job.max_tokens},
        "filter_list": [{"name": FILTER, "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": False, "ignore_punctuation": False}],
        "metadata": {"version": 1.0},
    }
    if systems:
        config["description"] = systems.pop()
    (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return name


def _task_of(task_dir: Path) -> str:
    names = [p.stem for p in task_dir.glob("*.yaml")]
    if len(names) != 1:
        raise ValueError(f"{task_dir}: expected one task YAML (write_task), found {names}")
    return names[0]


def model_args(target: Target) -> str:
    args = f"pretrained={target.base}"
    return args + (f",peft={target.adapter}" if target.adapter else "") + ",dtype=float32"


def commands(targets: list[Target], task_dir: Path, out: Path, python: Path, batch: int) -> list[list[str]]:
    """One `lm-eval run` per target (cwd anywhere; each writes under out/<target>/)."""
    task = _task_of(task_dir)
    return [[str(python), "-m", "lm_eval", "run", "--model", "hf", "--model_args", model_args(t),
             "--tasks", task, "--include_path", str(task_dir.resolve()), "--device", "cpu",
             "--batch_size", str(batch), "--apply_chat_template", "--log_samples", "--seed", "0",
             "--output_path", str((out / t.name).resolve())] for t in targets]


def api_command(targets: list[Target], task_dir: Path, out: Path, python: Path, batch: int) -> list[str]:
    """One process for the whole sweep through lm-eval's Python API (lmeval_sweep.py, run by the peer's
    interpreter): each base loaded once, base targets evaluated on it, then its adapters swapped in place."""
    out.mkdir(parents=True, exist_ok=True)
    spec = {"task": _task_of(task_dir), "include_path": str(task_dir.resolve()), "batch": batch,
            "targets": [{"name": t.name, "base": str(t.base), "adapter": str(t.adapter) if t.adapter else None,
                         "out": str((out / t.name).resolve())} for t in targets]}
    (out / "sweep.json").write_text(json.dumps(spec, indent=1))
    return [str(python), str(SWEEP_SCRIPT.resolve()), str((out / "sweep.json").resolve())]


def _newest(target_out: Path, pattern: str) -> Path | None:
    found = sorted(target_out.rglob(pattern), key=lambda p: p.name)  # names end in lm-eval's date id
    return found[-1] if found else None


def parse_answers(out: Path) -> dict[str, dict[int, str]]:
    """{target: {sample id: answer}}: each sample's filtered response (generated text, eos/until cut, stripped),
    from lm-eval's samples_<task>_<date>.jsonl; the id is the row's own (doc.id: tunelab's sample id)."""
    answers: dict[str, dict[int, str]] = {}
    for target_out in sorted(p for p in out.iterdir() if p.is_dir()):
        samples = _newest(target_out, "samples_*.jsonl")
        if samples is None:
            continue
        per: dict[int, str] = {}
        for line in samples.read_text().splitlines():
            s = json.loads(line)
            if s.get("filter", FILTER) == FILTER:
                per[int(s["doc"]["id"])] = s["filtered_resps"][0]
        answers[target_out.name] = per
    return answers


def parse_accuracy(out: Path) -> dict[str, float | None]:
    """{target: exact_match} from lm-eval's results_<date>.json (the task's exact_match under the strip filter)."""
    acc: dict[str, float | None] = {}
    for target_out in sorted(p for p in out.iterdir() if p.is_dir()):
        results = _newest(target_out, "results_*.json")
        if results is None:
            continue
        data = json.loads(results.read_text())["results"]
        ((_task, metrics),) = data.items()
        acc[target_out.name] = metrics.get(f"exact_match,{FILTER}")
    return acc


def eval_seconds(out: Path) -> dict[str, float | None]:
    """{target: lm-eval's own total_evaluation_time_seconds} (model load + generation + scoring, in-process)."""
    secs: dict[str, float | None] = {}
    for target_out in sorted(p for p in out.iterdir() if p.is_dir()):
        results = _newest(target_out, "results_*.json")
        if results is not None:
            value = json.loads(results.read_text()).get("total_evaluation_time_seconds")
            secs[target_out.name] = float(value) if value is not None else None
    return secs


def raw_prompts(out: Path) -> dict[str, dict[int, str]]:
    """{target: {sample id: the context lm-eval generated from}} (the rendered chat prompt), for checking."""
    prompts: dict[str, dict[int, str]] = {}
    for target_out in sorted(p for p in out.iterdir() if p.is_dir()):
        samples = _newest(target_out, "samples_*.jsonl")
        if samples is not None:
            rows = [json.loads(line) for line in samples.read_text().splitlines()]
            prompts[target_out.name] = {int(s["doc"]["id"]): s["arguments"]["gen_args_0"]["arg_0"] for s in rows}
    return prompts


def prompt_ids(out: Path, bases: dict[str, Path]) -> dict[str, dict[int, list[int]]]:
    """{target: {sample id: prompt token ids}}: the contexts lm-eval logged, encoded as its HFLM.tok_batch_encode
    encodes them (no added special tokens when the text already starts with the tokenizer's BOS text, else the
    tokenizer's default; `add_bos_token` is never set here), by the target's base tokenizer, which lm-eval loads."""
    from transformers import AutoTokenizer

    tokenizers: dict[Path, Any] = {}
    ids: dict[str, dict[int, list[int]]] = {}
    for name, prompts in raw_prompts(out).items():
        base = bases[name]
        if base not in tokenizers:
            tokenizers[base] = AutoTokenizer.from_pretrained(base)
        tok = tokenizers[base]
        bos = getattr(tok, "bos_token", None)
        ids[name] = {i: list(tok(text, **({"add_special_tokens": False} if bos and text.startswith(bos) else {}))
                             ["input_ids"]) for i, text in prompts.items()}
    return ids
