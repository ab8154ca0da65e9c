"""LLaMA-Factory 0.9.5's side: `llamafactory-cli train config.yaml` in its own env (scripts/peer-env llamafactory).

The job maps onto its YAML keys one to one (LoRA r16/alpha 32/dropout 0 on q_proj,v_proj, cutoff_len 64, batch 8,
1 epoch, lr 2e-3 cosine, no warm-up, seed 0, fp32 on the CPU, a log line every step, no checkpoint but the final
adapter). Two of its defaults differ from the job and are turned off: gradient checkpointing (it enables it unless
`disable_gradient_checkpointing`) and the tqdm bar (HF's PrinterCallback then prints each step's log dict alone).

The rows are the chat JSONL, read as its "sharegpt" format with OpenAI tags; each row's own system message is the
system prompt. The prompt format is its `template:`, chosen so that its token ids equal the model's own chat
template (`tokenizer.apply_chat_template`) for every row of the job:
- smollm2: its built-in `smollm2` template (ChatML; its default system prompt never shows, every row has one).
- tiny: no built-in template renders `<|bos|><|system|>…<|eot|><|user|>…<|eot|><|assistant|>…<|eot|>`, and
  without `template:` it parses the tokenizer's template into slots that repeat `<|bos|>` before the user turn.
  So a wrapper (`tunelab_lf.py`, written beside the config) registers `tunelab_tiny` with its own
  `register_template` and then runs the same `llamafactory-cli` entry point, in the same process.
One difference that stays: it trains on its whole assistant slot, so for smollm2 the "\\n" after `<|im_end|>` is
a label too (tunelab: context); for tiny the labels are the answer and `<|eot|>`, as in tunelab.

Its adapter is a PEFT directory already (trainer.save_model of the LoRA model): no conversion."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from peerlib.job import Inputs, Job
from peerlib.measure import Measured, installed_version
from peerlib.result import StepLog

CONFIG = "config.yaml"  # the run's YAML, in its directory
OUTPUT = "lf_out"  # its output_dir: the adapter, trainer_log.jsonl, train_results.json
DATASET = "tunelab_train"
# model -> (template name, registration the wrapper runs first, or None for a built-in template)
TINY_TEMPLATE = '''register_template(
    name="tunelab_tiny",
    format_prefix=EmptyFormatter(slots=[{"bos_token"}]),
    format_system=StringFormatter(slots=["<|system|>{{content}}<|eot|>"]),
    format_user=StringFormatter(slots=["<|user|>{{content}}<|eot|><|assistant|>"]),
    format_assistant=StringFormatter(slots=["{{content}}<|eot|>"]),
    stop_words=["<|eot|>"],
)'''
TEMPLATES: dict[str, tuple[str, str | None]] = {"smollm2": ("smollm2", None), "tiny": ("tunelab_tiny", TINY_TEMPLATE)}
WRAPPER = '''"""Written by tunelab's benchmarks/peerlib/llamafactory.py: register the model's chat template with
LLaMA-Factory's own register_template, then run its CLI (`llamafactory-cli ARGS`) in this process."""
import sys

from llamafactory.data.formatter import EmptyFormatter, StringFormatter
from llamafactory.data.template import register_template

{registration}

from llamafactory.cli import main

sys.argv = ["llamafactory-cli", *sys.argv[1:]]
main()
'''


def _dataset_info(inputs: Inputs) -> dict[str, object]:
    """dataset_info.json: the train JSONL as sharegpt rows with OpenAI role tags (system = the row's own)."""
    return {DATASET: {
        "file_name": str(inputs.jsonl("train").resolve()),
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"},
    }}


def _config(inputs: Inputs, job: Job, template: str) -> dict[str, object]:
    """The run's YAML keys: the job, plus the defaults of LLaMA-Factory that would make it another job."""
    if job.dtype != "float32":
        raise ValueError(f"llamafactory: this benchmark runs fp32 on a CPU, not {job.dtype}")
    return {
        "model_name_or_path": str(inputs.model_dir.resolve()),
        "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": job.rank, "lora_alpha": job.alpha, "lora_dropout": job.dropout,
        "lora_target": ",".join(job.target_modules),
        "dataset": DATASET, "dataset_dir": ".", "template": template, "cutoff_len": job.max_seq_len,
        "packing": False, "overwrite_cache": True, "val_size": 0,
        "output_dir": OUTPUT, "overwrite_output_dir": True, "save_strategy": "no", "plot_loss": False,
        "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
        "per_device_train_batch_size": job.micro_batch, "gradient_accumulation_steps": 1,
        "num_train_epochs": float(job.epochs), "learning_rate": job.learning_rate,
        "lr_scheduler_type": job.scheduler, "warmup_steps": job.warmup_steps,
        "seed": job.seed, "bf16": False, "fp16": False, "use_cpu": True,
        "disable_gradient_checkpointing": True, "eval_strategy": "no",
        "include_effective_tokens_per_second": True, "include_num_input_tokens_seen": True,
    }


def _yaml(config: dict[str, object]) -> str:
    """YAML written as `key: <JSON scalar>` lines (JSON scalars are YAML): no YAML library needed here."""
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items())


class LlamaFactoryPeer:
    name = "llamafactory"
    env = "llamafactory"

    def version(self, python: Path) -> str:
        return installed_version(python, "llamafactory")

    def train_command(self, inputs: Inputs, job: Job, out: Path, python: Path) -> list[str]:
        """Write dataset_info.json and config.yaml (and the template wrapper where one is needed) into `out`."""
        if inputs.model not in TEMPLATES:
            raise ValueError(f"llamafactory: no chat template known to equal {inputs.model}'s own")
        template, registration = TEMPLATES[inputs.model]
        out.mkdir(parents=True, exist_ok=True)
        (out / "dataset_info.json").write_text(json.dumps(_dataset_info(inputs), indent=1))
        (out / CONFIG).write_text(_yaml(_config(inputs, job, template)))
        if registration is None:
            return [str(Path(python).parent / "llamafactory-cli"), "train", CONFIG]
        (out / "tunelab_lf.py").write_text(WRAPPER.format(registration=registration))
        return [str(python), "tunelab_lf.py", "train", CONFIG]

    def adapter_dir(self, out: Path) -> Path:
        return out / OUTPUT

    def parse(self, measured: Measured, out: Path) -> StepLog:
        """Step times from the log dicts HF's PrinterCallback prints, one line per step (its arrival time is the
        step's time; the closing summary dict has no "loss"). Losses from its trainer_log.jsonl, one entry per
        logged step at full precision (the printed dict rounds them to 4 digits); the printed ones if it is
        missing or does not match. Its own tokens/s: effective_tokens_per_sec in train_results.json (the rows'
        unpadded token count x epochs / train_runtime)."""
        log = StepLog()
        printed: list[float] = []
        for line in measured.lines:
            step = _step_dict(line.text)
            if step is not None:
                log.step_times.append(line.t)
                printed.append(float(step["loss"]))
        logged = _logged_losses(out / OUTPUT / "trainer_log.jsonl")
        log.losses = logged if len(logged) == len(printed) else printed
        results = out / OUTPUT / "train_results.json"
        if results.is_file():
            value = json.loads(results.read_text()).get("effective_tokens_per_sec")
            log.own_tokens_per_s = float(value) if value is not None else None
        return log


def _logged_losses(path: Path) -> list[float]:
    """The training losses its LogCallback wrote, one JSON line per logged step ([] when it wrote none)."""
    if not path.is_file():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(e["loss"]) for e in entries if e.get("loss") is not None]


def _step_dict(text: str) -> dict[str, Any] | None:
    """One training step's log line, `{'loss': …, 'grad_norm': …, 'learning_rate': …, 'epoch': …}`, or None."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}") and "'loss'" in text):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, dict) or "loss" not in value or "learning_rate" not in value:
        return None
    return value


PEER = LlamaFactoryPeer()
