"""Oumi 0.9's side: `oumi train -c config.yaml` in its own env (scripts/peer-env oumi).

Trainer: `trainer_type: TRL_SFT` (TRL's SFTTrainer, the trainer tunelab drives too, and the only one `oumi tune`
runs). Oumi tokenizes the rows itself (`dataset_name: text_sft_jsonl`: the tokenizer's apply_chat_template on each
row's messages), so TRL's own dataset preparation is skipped, and the answer-only loss is Oumi's completions
collator (`text_completions_only_with_padding`, `train_target: ALL_ASSISTANT_TURNS`): a label from the end of the
assistant header through the end-of-turn token, inclusive; batches padded on the right.

Chat template: `model.chat_template: auto` keeps the model directory's own template (without it, Oumi swaps in
its built-in template for the model type: `llama3-instruct` for the tiny Llama). The collator's two markers are
given, not auto-detected, and read off the model's template the way tunelab marks its answers: the response
marker is the generation prompt (`<|assistant|>`, `<|im_start|>assistant\\n`), the end of turn is the special
token written right after an answer (`<|eot|>`, `<|im_end|>`). Oumi's own detection would put the "\\n" around a
ChatML answer into the loss as well; with these markers the labels are the answer and its end-of-turn token only,
as in tunelab (checked on 8 rows of each model: see the sample's COMMAND). The ids are apply_chat_template's
exactly; for ChatML that keeps the "\\n" after the last `<|im_end|>` (label -100, after every label: no effect on
the loss), which tunelab's own encoding leaves off.

The job: LoRA r16/alpha 32/dropout 0 on q_proj,v_proj, max length 64 (model_max_length), batch 8, accumulation 1,
1 epoch, lr 2e-3 cosine, 0 warm-up, seed 0 (data_seed too), fp32 on the CPU (`trainer_kwargs.use_cpu`), a log
line every step, no evaluation, no checkpoint (`save_steps: 0`) but the final adapter, no tensorboard/wandb/
mlflow. Two Oumi defaults that would make it another job are set to tunelab's: the optimizer (`adamw_torch_fused`,
transformers 5's default, not Oumi's `adamw_torch`) and gradient checkpointing (off; TRL turns it on by default).

Output: one log dict per optimizer step on stdout (HF's PrinterCallback; tqdm is off), `{'loss': '3.8', …}`: its
arrival is the step's time. Oumi's own throughput: `include_performance_metrics: true` turns on HF's
`include_num_input_tokens_seen`, and every step's record in `oumi_out/metrics_rank0000.jsonl` (Oumi's
MetricsLoggerCallback) then carries `train_tokens_per_second` = input tokens seen (padding included) / time since
training began; the last step's value is its figure for the run. (Its MFU callbacks are GPU-only.)
The adapter is a PEFT directory already (trainer.save_model of the LoRA model): no conversion."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from peerlib.job import Inputs, Job
from peerlib.measure import Measured, installed_version
from peerlib.result import StepLog

OUTPUT = "oumi_out"  # training.output_dir: the adapter, logs/, telemetry/
CONFIG = "config.yaml"
METRICS = "metrics_rank0000.jsonl"  # Oumi's MetricsLoggerCallback, in output_dir
_PROBE = "Zq7Probe"


def chat_markers(model_dir: Path) -> tuple[str, str]:
    """(response_template, end_of_turn_template) read off the model's own chat template: the generation prompt
    that precedes an answer, and the special token its template writes right after one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    probe = [{"role": "user", "content": "Hi"}]
    base = str(tok.apply_chat_template(probe, tokenize=False))
    prompt = str(tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=True))
    if not prompt.startswith(base) or prompt == base:
        raise ValueError(f"oumi: {model_dir}'s chat template has no generation prompt to mark answers with")
    full = str(tok.apply_chat_template([*probe, {"role": "assistant", "content": _PROBE}], tokenize=False))
    tail = full[full.rindex(_PROBE) + len(_PROBE):]
    first = tok(tail, add_special_tokens=False)["input_ids"][:1]
    if not first or first[0] not in set(tok.all_special_ids) | set(tok.added_tokens_decoder):
        raise ValueError(f"oumi: {model_dir}'s chat template writes no end-of-turn token after an answer")
    return prompt[len(base):], str(tok.convert_ids_to_tokens(first[0]))


def dataset_split(path: Path, markers: tuple[str, str]) -> dict[str, Any]:
    """One data split: the chat JSONL, tokenized by Oumi with the model's template, answer-only labels."""
    response, end_of_turn = markers
    return {
        "datasets": [{"dataset_name": "text_sft_jsonl", "dataset_path": str(path.resolve())}],
        "collator_name": "text_completions_only_with_padding",
        "train_target": "ALL_ASSISTANT_TURNS",
        "collator_kwargs": {"response_template": response, "end_of_turn_template": end_of_turn},
        "seed": 0,
    }


def model_params(inputs: Inputs, job: Job) -> dict[str, Any]:
    if job.dtype != "float32":
        raise ValueError(f"oumi: this benchmark runs fp32 on a CPU, not {job.dtype}")
    return {"model_name": str(inputs.model_dir.resolve()), "model_max_length": job.max_seq_len,
            "torch_dtype_str": "float32", "chat_template": "auto", "trust_remote_code": False}


def peft_params(job: Job) -> dict[str, Any]:
    return {"lora_r": job.rank, "lora_alpha": job.alpha, "lora_dropout": job.dropout,
            "lora_target_modules": list(job.target_modules), "lora_bias": "none", "lora_task_type": "CAUSAL_LM"}


def training_params(job: Job, output_dir: str) -> dict[str, Any]:
    """Oumi's `training:` section for the job (TrainingParams field names)."""
    return {
        "trainer_type": "TRL_SFT", "use_peft": True, "output_dir": output_dir,
        "num_train_epochs": job.epochs, "max_steps": -1,
        "per_device_train_batch_size": job.micro_batch, "per_device_eval_batch_size": job.micro_batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": job.learning_rate, "lr_scheduler_type": job.scheduler, "warmup_steps": job.warmup_steps,
        "optimizer": "adamw_torch_fused", "weight_decay": 0.0, "max_grad_norm": 1.0,
        "seed": job.seed, "data_seed": job.seed, "enable_gradient_checkpointing": False,
        "mixed_precision_dtype": "NONE", "compile": False,
        "logging_steps": 1, "logging_first_step": False, "log_examples": False,
        "save_steps": 0, "save_epoch": False, "save_final_model": True,
        "eval_strategy": "no",
        "enable_wandb": False, "enable_mlflow": False, "enable_tensorboard": False,
        "include_performance_metrics": True, "dataloader_num_workers": 0,
        "trainer_kwargs": {"use_cpu": True, "disable_tqdm": True},
    }


def train_config(inputs: Inputs, job: Job, output_dir: str = OUTPUT) -> dict[str, Any]:
    """The whole `oumi train` config (TrainingConfig)."""
    markers = chat_markers(inputs.model_dir)
    return {"model": model_params(inputs, job),
            "data": {"train": dataset_split(inputs.jsonl("train"), markers)},
            "training": training_params(job, output_dir),
            "peft": peft_params(job)}


def write_yaml(path: Path, config: dict[str, Any]) -> None:
    """JSON is YAML: no YAML library needed on this side, and every string is quoted exactly."""
    path.write_text(json.dumps(config, indent=1) + "\n")


class OumiPeer:
    name = "oumi"
    env = "oumi"

    def version(self, python: Path) -> str:
        return installed_version(python, "oumi")

    def train_command(self, inputs: Inputs, job: Job, out: Path, python: Path) -> list[str]:
        out.mkdir(parents=True, exist_ok=True)
        write_yaml(out / CONFIG, train_config(inputs, job))
        return [str(Path(python).parent / "oumi"), "train", "-c", CONFIG]

    def adapter_dir(self, out: Path) -> Path:
        return out / OUTPUT

    def parse(self, measured: Measured, out: Path) -> StepLog:
        """Each step's log dict (HF's PrinterCallback, one line per optimizer step; its arrival is the step's time)
        and Oumi's own tokens/s (metrics_rank0000.jsonl; the last step dict when that file is missing)."""
        log = StepLog()
        last_step: dict[str, Any] = {}
        for line in measured.lines:
            step = log_dict(line.text)
            if step is None:
                continue
            if "loss" in step and "learning_rate" in step:
                log.step_times.append(line.t)
                log.losses.append(float(step["loss"]))
                last_step = step
        log.own_tokens_per_s = own_tokens_per_s(out / OUTPUT, last_step)
        return log


def log_dict(text: str) -> dict[str, Any] | None:
    """A `{...}` log line as HF's PrinterCallback prints it, or None."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None


def own_tokens_per_s(output_dir: Path, last_step: dict[str, Any]) -> float | None:
    """Oumi's own figure: the last `train_tokens_per_second` in its metrics_rank0000.jsonl (from stdout's step
    dicts when the file is missing)."""
    records: list[dict[str, Any]] = [last_step] if last_step else []
    metrics = output_dir / METRICS
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rates = [float(r["train_tokens_per_second"]) for r in records if "train_tokens_per_second" in r]
    return rates[-1] if rates else None


PEER = OumiPeer()
