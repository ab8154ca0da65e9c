"""inspect-ai's own `hf/` provider evaluating a sweep's targets, beside `tunelab eval` (which runs inspect-ai with
its own provider and its own batched loop). Runs in tunelab's own venv (inspect-ai is a tunelab dependency).

Same rows, messages, decoding and scorer as tunelab's exact_match task: the task file written into task_dir builds
each Sample from tunelab's rows (tunelab_answers.eval_job: [system?, user] messages, the answer as target, the row
number as id) with GenerateConfig(max_tokens) and a case-sensitive stripped-equality scorer (tunelab's exact_match).
The provider renders the messages with the tokenizer's own chat template and the generation prompt (hf.py's
hf_chat), decodes without special tokens, stops at the generation config's eos (the template's end-of-turn for the
tiny and SmolLM2 models; a template whose end-of-turn is not the eos would need stop_seqs). `-M do_sample=false`
(the provider samples by default).

Its batching (inspect-ai 0.3.285, model/_providers/hf.py): each sample's request goes into a queue and its
coroutine then polls its result once a second (`batched_generate`: `future.result(timeout=0.01)`, then
`anyio.sleep(1)`); a background thread drains the queue into a batch until it holds `max_connections` requests
or no request has come for 2 s (`_drain_batches(timeout=2)`), and only then generates. At most `max_connections`
samples are in flight (max_samples defaults to it). With a batch smaller than a target's samples, every batch
costs up to a second of polling after it is generated, and the samples of the next batch trickle in as the
previous ones' polls return; a last batch short of `max_connections` waits out the 2 s. Its best setting here:
`--max-connections` (and `--max-samples`) = the target's sample count (best_batch): every request queued at
once, one batch generated as soon as it is full, one poll after it. (`-M batch_size` is read and never used.) An adapter loads by passing its directory as
model_path: transformers' PEFT integration reads adapter_config.json, loads the base it names and the adapter
(modules_to_save included: logits equal to PeftModel.from_pretrained's, checked on the demo's tiny-4x256_r16).
Its prompts are checked against tunelab's token for token after every run (`prompt_ids`: its own rendering code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peerlib.measure import installed_version
from peerlib.tunelab_answers import EvalJob, Target

NAME = name = "inspect-ai hf/"  # the row's name (module attributes, as a Peer has them)
ENV = env = ""  # tunelab's own venv
TASK_FILE = "inspect_task.py"
TASK_SOURCE = '''"""tunelab's exact_match task for inspect-ai's hf/ provider (written by benchmarks/peerlib/inspect_hf.py)."""
import json
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer, stderr
from inspect_ai.solver import TaskState, generate

ROLES = {"system": ChatMessageSystem, "user": ChatMessageUser}


@scorer(metrics=[accuracy(), stderr()])
def exact_match():
    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion.strip()
        return Score(value=CORRECT if any(answer == t.strip() for t in target.target) else INCORRECT, answer=answer)
    return score


@task
def tunelab_exact_match() -> Task:
    spec = json.loads((Path(__file__).parent / "rows.json").read_text())
    samples = [Sample(id=r["id"], input=[ROLES[m["role"]](content=m["content"]) for m in r["messages"]],
                      target=r["target"]) for r in spec["rows"]]
    return Task(dataset=MemoryDataset(samples, name=spec["task"]), solver=generate(), scorer=exact_match(),
                config=GenerateConfig(max_tokens=spec["max_tokens"]), name=spec["task"])
'''


def version(python: Path) -> str:
    return installed_version(python, "inspect_ai")


def write_task(task_dir: Path, job: EvalJob) -> Path:
    """The task file (and the rows it reads) in task_dir; returns the file."""
    task_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"id": r.id, "messages": r.messages, "target": r.target} for r in job.rows]
    (task_dir / "rows.json").write_text(json.dumps({"task": job.task, "max_tokens": job.max_tokens, "rows": rows}))
    path = task_dir / TASK_FILE
    path.write_text(TASK_SOURCE)
    return path


def prompt_ids(job: EvalJob, base: Path) -> dict[int, list[int]]:
    """{sample id: prompt token ids} as the hf/ provider builds them for a model with `base`'s tokenizer: its own
    hf_chat (the tokenizer's chat template, the generation prompt) on the sample's messages, then its batch
    tokenizer's call (the tokenizer's default special tokens; left padding aside). inspect-ai's log keeps no prompt,
    so its rendering code is run here, on a provider object that loads no model."""
    from inspect_ai.model import ChatMessageSystem, ChatMessageUser
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from transformers import AutoTokenizer

    class Renderer(HuggingFaceAPI):
        def __init__(self, tokenizer: Any) -> None:  # the attributes hf_chat reads, as the -M args leave them
            self.tokenizer = tokenizer
            self.chat_template = self.use_chat_template = self.enable_thinking = None

    renderer = Renderer(AutoTokenizer.from_pretrained(base))
    roles = {"system": ChatMessageSystem, "user": ChatMessageUser}
    out = {}
    for r in job.rows:
        chat = renderer.hf_chat([roles[m["role"]](content=m["content"]) for m in r.messages], [])
        out[r.id] = list(renderer.tokenizer(chat)["input_ids"])
    return out


def check_stops(base: Path, stops: list[int]) -> None:
    """The provider stops only where the model's generation config says (its eos ids; no stop_seqs are given):
    raise unless those are tunelab's stop ids for this base, so both end an answer at the same token."""
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(base).eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if eos_ids != set(stops):
        raise ValueError(f"{base}/generation_config.json: eos_token_id {sorted(eos_ids)} is not tunelab's stop ids "
                         f"{sorted(stops)}: inspect's hf/ provider would stop elsewhere (give it stop_seqs)")


def best_batch(job: EvalJob) -> int:
    """The provider's batch at its best: a target's every sample in one batch (see the module's docstring)."""
    return len(job.rows)


def commands(targets: list[Target], task_dir: Path, out: Path, python: Path, batch: int) -> list[list[str]]:
    """One `inspect eval` per target (the hf provider loads one model per process), `batch` requests in flight and
    batched at once; JSON logs in out/<target>/."""
    task = f"{(task_dir / TASK_FILE).resolve()}@tunelab_exact_match"  # an absolute path needs the @name form
    cmds = []
    for t in targets:
        model = t.adapter if t.adapter else t.base
        cmds.append([str(python), "-m", "inspect_ai", "eval", task, "--model", "hf/local",
                     "-M", f"model_path={model}", "-M", f"tokenizer_path={t.base}", "-M", "device=cpu",
                     "-M", "do_sample=false", "-M", "dtype=float32", "--max-connections", str(batch), "--max-samples", str(batch),
                     "--log-dir", str((out / t.name).resolve()), "--log-format", "json", "--display", "plain",
                     "--no-log-realtime", "--seed", "0"])
    return cmds


def _log(target_out: Path) -> dict | None:
    logs = sorted(target_out.glob("*.json"), key=lambda p: p.name)  # names start with the time
    return json.loads(logs[-1].read_text()) if logs else None


def parse_answers(out: Path) -> dict[str, dict[int, str]]:
    """{target: {sample id: answer}}: each sample's score answer (the completion stripped, as it was scored)."""
    answers: dict[str, dict[int, str]] = {}
    for target_out in sorted(p for p in out.iterdir() if p.is_dir()):
        log = _log(target_out)
        if log is None:
            continue
        per = {}
        for s in log.get("samples") or []:
            first = next(iter((s.get("scores") or {}).values()), None)
            per[int(s["id"])] = first["answer"] if first and first.get("answer") is not None else (
                s["output"]["choices"][0]["message"]["content"].strip() if s["output"]["choices"] else "")
        answers[target_out.name] = per
    return answers


def parse_accuracy(out: Path) -> dict[str, float | None]:
    """{target: accuracy} from the log's results."""
    acc: dict[str, float | None] = {}
    for target_out in sorted(p for p in out.iterdir() if p.is_dir()):
        log = _log(target_out)
        if log is None or not log.get("results"):
            continue
        metrics = log["results"]["scores"][0]["metrics"]
        acc[target_out.name] = metrics["accuracy"]["value"] if "accuracy" in metrics else None
    return acc
