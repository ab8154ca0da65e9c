"""torchtune 0.6.1 (`tune run lora_finetune_single_device --config config.yaml`) running the one LoRA job on a CPU
(fp32), or the GPU job on one GPU (bf16; peerlib/job.py GPU_JOB).

How the job maps onto torchtune, and why:
- Model: torchtune has no builder for SmolLM2 or the tiny model, so the generic Llama 3.2 LoRA builder is given
  the model's config.json sizes. `scale_factor: 1` turns Llama 3.2's scaled RoPE into plain RoPE (every branch of
  its frequency rescaling divides by the factor), which is what config.json's `rope_type: default` means; a
  Llama 3 model's `rope_type: llama3` gets its own factor (the GPU job's random-init Llama-3.2-1B: 32);
  `tie_word_embeddings` comes from config.json. The HF checkpointer reads the safetensors files (permuting q/k for
  torchtune's RoPE layout) and, with `save_adapter_weights_only`, writes the adapter in PEFT's format
  (adapter_config.json + adapter_model.safetensors) under ckpt/epoch_0: no conversion needed.
- Template: torchtune 0.6.1 cannot render a Hugging Face chat template, so the run directory gets
  torchtune_tokenizer.py (its TemplateTokenizer renders the model directory's own template and masks everything
  but each answer and its end-of-turn token, token for token as tunelab does).
- Optimizer: AdamW with weight_decay 0 (torch's default is 0.01; tunelab's is 0) and gradient clipping at 1.0
  (transformers' Trainer default, which tunelab and the Trainer-based peers inherit).
- Step times and losses: torchtune prints no log line per step, only its tqdm bar; the bar's description
  `EPOCH|STEP|Loss: X` is rewritten (a `\\r`) every step, and the measured pipe is read in text mode, which turns
  each `\\r` into a line end, so every step has a timestamped line of its own.
- Own throughput: `tokens_per_second_per_gpu` per step from the DiskLogger file logs/metrics.txt. torchtune counts
  only the tokens that carry loss (the answers), not the whole sequence: not comparable with other tools'
  figures; the common tokens/s (result.steady_tokens_per_s) is the comparable one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from peerlib.job import Inputs, Job
from peerlib.measure import Measured, installed_version
from peerlib.result import WARMUP_STEPS, StepLog

TOKENIZER_MODULE = Path(__file__).with_name("torchtune_tokenizer.py")
CONFIG = "config.yaml"  # the recipe's config, in the run's directory
METRICS = Path("logs") / "metrics.txt"
DTYPES = {"float32": "fp32", "bfloat16": "bf16"}  # the job's dtype: torchtune's name for it
_BAR = re.compile(r"(\d+)\|(\d+)\|Loss: ([-+0-9.eE]+|nan|inf)")
_METRIC = re.compile(r"Step (\d+) \|.*?tokens_per_second_per_gpu:(?:tensor\()?([-+0-9.eE]+)")


LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _rope_scale_factor(model_dir: Path, rope: dict) -> int:
    """torchtune's scale_factor for the model's RoPE: 1 for plain RoPE (every branch of its frequency rescaling
    divides by the factor), the factor itself for Llama 3's scaling (rope_type llama3: torchtune's
    Llama3ScaledRoPE, whose other constants are LLAMA3_ROPE's, fixed in its code). Anything else is refused."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return 1
    if kind == "llama3" and all(float(rope.get(k, -1)) == v for k, v in LLAMA3_ROPE.items()) \
            and float(rope["factor"]).is_integer():
        return int(rope["factor"])
    raise ValueError(f"{model_dir}: RoPE {rope!r}; only plain RoPE and Llama 3's scaling {LLAMA3_ROPE} are mapped")


def model_args(model_dir: Path, job: Job) -> dict:
    """The Llama 3.2 LoRA builder's arguments from the model's config.json (plain RoPE, its own tying)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {}
    scale_factor = _rope_scale_factor(model_dir, {**(cfg.get("rope_scaling") or {}), **rope})
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    if cfg.get("head_dim", hidden // heads) != hidden // heads:
        raise ValueError(f"{model_dir}: head_dim {cfg['head_dim']} != hidden/heads; torchtune derives it")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError(f"{model_dir}: biases in attention/MLP; Llama 3.2's builder has none")
    return {
        "_component_": "torchtune.models.llama3_2._component_builders.lora_llama3_2",
        "lora_attn_modules": list(job.target_modules),
        "apply_lora_to_mlp": False,
        "apply_lora_to_output": False,
        "vocab_size": cfg["vocab_size"],
        "num_layers": cfg["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": cfg.get("num_key_value_heads", heads),
        "embed_dim": hidden,
        "max_seq_len": cfg.get("max_position_embeddings", 2048),
        "intermediate_dim": cfg["intermediate_size"],
        "attn_dropout": 0.0,
        "norm_eps": cfg["rms_norm_eps"],
        "rope_base": rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
        "scale_factor": scale_factor,
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "lora_rank": job.rank,
        "lora_alpha": job.alpha,
        "lora_dropout": job.dropout,
    }


def config(inputs: Inputs, job: Job, out: Path) -> dict:
    """The recipe's whole config: the job on its device (CPU, fp32; or one GPU, bf16), no intermediate checkpoint,
    a metric line every step."""
    if job.dtype not in DTYPES or job.warmup_steps or job.scheduler != "cosine":
        raise ValueError(f"this mapping covers {', '.join(DTYPES)}, cosine, no warm-up")
    return {
        "output_dir": str(out),
        "model": model_args(inputs.model_dir, job),
        "tokenizer": {"_component_": "torchtune_tokenizer.TemplateTokenizer", "model_dir": str(inputs.model_dir),
                      "max_seq_len": job.max_seq_len},
        "checkpointer": {"_component_": "torchtune.training.FullModelHFCheckpointer",
                         "checkpoint_dir": str(inputs.model_dir),
                         "checkpoint_files": sorted(p.name for p in inputs.model_dir.glob("*.safetensors")),
                         "recipe_checkpoint": None, "output_dir": str(out / "ckpt"), "model_type": "LLAMA3_2"},
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": True,
        "dataset": {"_component_": "torchtune.datasets.chat_dataset", "source": "json",
                    "data_files": str(inputs.jsonl("train")), "split": "train",
                    "conversation_column": "messages", "conversation_style": "openai",
                    "train_on_input": False, "packed": False},
        "seed": job.seed,
        "shuffle": True,
        "batch_size": job.micro_batch,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": job.learning_rate, "weight_decay": 0.0},
        "lr_scheduler": {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                         "num_warmup_steps": job.warmup_steps},
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "epochs": job.epochs,
        "max_steps_per_epoch": None,
        "gradient_accumulation_steps": 1,
        "clip_grad_norm": 1.0,
        "compile": False,
        "device": job.device,
        "dtype": DTYPES[job.dtype],
        "enable_activation_checkpointing": False,
        "enable_activation_offloading": False,
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger",
                          "log_dir": str(out / METRICS.parent), "filename": METRICS.name},
        "log_every_n_steps": 1,
        "log_peak_memory_stats": False,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
    }


class TorchtunePeer:
    name = "torchtune"
    env = "torchtune"

    def version(self, python: Path) -> str:
        return installed_version(python, "torchtune")

    def train_command(self, inputs: Inputs, job: Job, out: Path, python: Path) -> list[str]:
        """config.yaml (JSON, which YAML reads) and the template tokenizer's module into `out`; `tune` of the env
        (beside its python: the venv's bin, not resolved through the symlink)."""
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG).write_text(json.dumps(config(inputs, job, out.resolve()), indent=2) + "\n")
        shutil.copyfile(TOKENIZER_MODULE, out / TOKENIZER_MODULE.name)
        return [str(Path(python).parent / "tune"), "run", "lora_finetune_single_device", "--config", CONFIG]

    def adapter_dir(self, out: Path) -> Path:
        """torchtune's HF checkpointer writes the PEFT files itself (adapter_only): ckpt/epoch_0 (one epoch)."""
        epochs = sorted((out / "ckpt").glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
        return epochs[-1] if epochs else out / "ckpt" / "epoch_0"

    def parse(self, measured: Measured, out: Path) -> StepLog:
        """Each step's first bar line (its time and loss); the mean of the steady steps' own tokens/s."""
        log = StepLog()
        seen: set[int] = set()
        for line in measured.lines:
            for match in _BAR.finditer(line.text):
                step = int(match.group(2))
                if step not in seen:
                    seen.add(step)
                    log.step_times.append(line.t)
                    log.losses.append(float(match.group(3)))
        metrics = out / METRICS
        if metrics.exists():
            rates = [float(m.group(2)) for m in _METRIC.finditer(metrics.read_text())]
            steady = rates[WARMUP_STEPS:] or rates
            log.own_tokens_per_s = sum(steady) / len(steady) if steady else None
        return log


PEER = TorchtunePeer()
