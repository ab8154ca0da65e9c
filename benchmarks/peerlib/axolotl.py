"""axolotl 0.21.0's side of the comparison: its YAML config for the one job, its command, and its own log.

axolotl trains in-process with `axolotl train FILE --launcher python` (here `python -m axolotl.cli.main`, the same
entry point, so the peer env's interpreter is named explicitly). The chat template is the model directory's own
(`chat_template: tokenizer_default`), loss on the assistant turns only (`roles_to_train: [assistant]`; axolotl's
default `train_on_eos: turn` keeps the end-of-turn token in the loss, as tunelab's completion-only loss does).
On a CPU its Triton LoRA kernels must be off and bf16/fp16 false (its `auto` would pick fp16). It writes a PEFT
adapter (adapter_config.json + adapter_model.safetensors) straight into its output_dir: nothing to convert.

Data order: axolotl's default shuffles the tokenized rows (`shuffle_merged_datasets`, datasets' shuffle, seed 0)
before the trainer's seeded sampler shuffles them again; switched off, its batches come in tunelab's, Oumi's and
LLaMA-Factory's order (the same first-step loss). Its LoRA A matrices stay another draw than theirs (PEFT's own,
after set_seed): axolotl 0.21 re-draws each from a generator seeded by the seed and the module's name
(`reinit_lora_from_seed`, no setting); the same initialisation, other numbers (docs/benchmarks.md).

Its per-step log is the trainer's logs dict printed to stdout, `{'loss': '5.918', ..., 'tokens/...': ...}`, on the
same line as tqdm's carriage-return progress bar; its own throughput, `tokens/train_per_sec_per_gpu` (include_tkps),
counts only the loss-carrying (label) tokens of each step, not all input tokens."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from peerlib.job import Inputs, Job
from peerlib.measure import Measured, installed_version
from peerlib.result import WARMUP_STEPS, StepLog

CONFIG = "axolotl.yml"
ADAPTER = "adapter"  # axolotl's output_dir: the final adapter, tokenizer and model config
PREPARED = "prepared"  # dataset_prepared_path: the tokenized rows (a datasets save_to_disk dir per config hash)
DATASETS_CACHE = "hf-datasets"  # HF datasets' cache, per run: a repeat must not find the previous run's tokens
STEP_DICT = re.compile(r"\{'loss': [^{}]*\}")  # one optimizer step's logs dict (eval dicts start 'eval_loss')
OWN_RATE = "tokens/train_per_sec_per_gpu"
# The job's optimizer: tunelab leaves TRL/transformers' default, which in transformers 5 is adamw_torch_fused
# (weight decay 0, max grad norm 1.0, betas 0.9/0.999, eps 1e-8 — axolotl's defaults match those).
OPTIMIZER = "adamw_torch_fused"


def _dtype_flags(dtype: str) -> dict[str, Any]:
    """axolotl's precision switches; all false is fp32 (its `bf16: auto` would resolve to fp16 on a CPU)."""
    return {"bf16": dtype == "bfloat16", "fp16": dtype == "float16", "tf32": False}


def config(inputs: Inputs, job: Job, out: Path) -> dict[str, Any]:
    """The job as axolotl's config keys (schema: axolotl/utils/schemas/config.py)."""
    return {
        "base_model": str(inputs.model_dir),
        "adapter": "lora",
        "lora_r": job.rank,
        "lora_alpha": job.alpha,
        "lora_dropout": job.dropout,
        "lora_target_modules": list(job.target_modules),
        # Triton LoRA kernels: switched on for any LoRA config without a device check; no Triton on a CPU.
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "lora_embedding_kernel": False,
        "sequence_len": job.max_seq_len,
        "sample_packing": False,
        "pad_to_sequence_len": False,
        "micro_batch_size": job.micro_batch,
        "gradient_accumulation_steps": 1,
        "num_epochs": job.epochs,
        "learning_rate": job.learning_rate,
        "lr_scheduler": job.scheduler,
        "warmup_steps": job.warmup_steps,
        "optimizer": OPTIMIZER,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": job.seed,
        # One shuffle, the trainer's seeded sampler, as for the other HF-Trainer tools: axolotl's default also shuffles
        # the tokenized rows (datasets' shuffle, seed 0) before the trainer, another data order.
        "shuffle_merged_datasets": False,
        **_dtype_flags(job.dtype),
        "gradient_checkpointing": False,
        "attn_implementation": "sdpa",  # what tunelab's `auto` runs for unpacked rows (no flash attention)
        "logging_steps": 1,
        "save_strategy": "no",  # only the final adapter, written at the end of training
        "val_set_size": 0,
        "use_tensorboard": False,
        "include_tkps": True,
        "dataset_prepared_path": str(out / PREPARED),
        "output_dir": str(out / ADAPTER),
        "datasets": [{
            "path": str(inputs.jsonl("train")),
            "ds_type": "json",
            "type": "chat_template",
            "field_messages": "messages",
            "chat_template": "tokenizer_default",  # the model dir's own template, rendered by its tokenizer
            "roles_to_train": ["assistant"],
        }],
    }


class AxolotlPeer:
    name = "axolotl"
    env = "axolotl"

    def version(self, python: Path) -> str:
        return installed_version(python, "axolotl")

    def train_command(self, inputs: Inputs, job: Job, out: Path, python: Path) -> list[str]:
        """JSON is YAML: axolotl reads the config with yaml.safe_load. `env` pins the two variables that make a
        run alone and silent whatever the caller's environment: its own datasets cache, no telemetry."""
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG).write_text(json.dumps(config(inputs, job, out), indent=2) + "\n")
        return ["env", f"HF_DATASETS_CACHE={out / DATASETS_CACHE}", "AXOLOTL_DO_NOT_TRACK=1",
                str(python), "-m", "axolotl.cli.main", "train", str(out / CONFIG), "--launcher", "python"]

    def adapter_dir(self, out: Path) -> Path:
        return out / ADAPTER

    def parse(self, measured: Measured, out: Path) -> StepLog:
        """One logs dict per optimizer step (logging_steps 1): its line's arrival time and loss; the tool's own
        tokens/s is the mean of its per-step rates after the first WARMUP_STEPS steps (step 1 logs none)."""
        log = StepLog()
        rates: list[float] = []
        for line in measured.lines:
            found = STEP_DICT.findall(line.text)
            if not found:
                continue
            logs = ast.literal_eval(found[-1])
            log.step_times.append(line.t)
            log.losses.append(float(logs["loss"]))
            if OWN_RATE in logs and len(log.step_times) > WARMUP_STEPS:
                rates.append(float(logs[OWN_RATE]))
        log.own_tokens_per_s = sum(rates) / len(rates) if rates else None
        return log


PEER = AxolotlPeer()
