"""A bare TRL SFTTrainer on the peers' tiny job (its inputs/models/tiny and inputs/data/tiny/train.jsonl): the
per-step wall from on_step_end stamps, median of steps 21-120, 2 threads. A third argument: the model's own loss
(Trainer.compute_loss) instead of TRL's, as tunelab's job takes it on a CPU. Run alternately in tunelab's environment
and Oumi's, with tunelab's own job between, 2026-11-29 20:29-20:36 (docs/benchmarks.md):

    python THIS MODEL_DIR TRAIN_JSONL [plain]
"""
import statistics
import sys
import tempfile
import time

import torch

torch.set_num_threads(2)
import transformers
import trl
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

model_dir, data = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
ds = load_dataset("json", data_files=data, split="train")
stamps = []
class Stamp(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        stamps.append(time.perf_counter())
cfg = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, max_steps=120, logging_steps=1,
                learning_rate=2e-3, lr_scheduler_type="cosine", report_to=[], save_strategy="no", use_cpu=True,
                gradient_checkpointing=False, disable_tqdm=True, max_length=64, seed=0, data_seed=0, bf16=False,
                dataloader_num_workers=0, assistant_only_loss=False)
class Plain(SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return transformers.Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
tr = (Plain if len(sys.argv) > 3 else SFTTrainer)(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                       task_type="CAUSAL_LM"), callbacks=[Stamp()])
tr.train()
d = [b - a for a, b in zip(stamps[20:], stamps[21:])]
print(("plain " if len(sys.argv) > 3 else "") + f"transformers {transformers.__version__} trl {trl.__version__} optim {cfg.optim}: step median {1000*statistics.median(d):.1f} ms")
