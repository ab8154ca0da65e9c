"""The tiny training comparison's one LoRA step without any trainer, to tell the libraries apart from the loops:
the peers benchmark's tiny model (its inputs/models/tiny), PEFT LoRA rank 16 on q_proj and v_proj, AdamW, one
8 × 59 random batch with loss on its last 9 positions, gradient clipping as the Trainer does, 2 threads; 10 steps of
warm-up, then the median of 60. Run alternately in tunelab's environment and Oumi's (transformers 5.23.0 against
5.16.1, PEFT 0.21.2 against 0.19.1), 3 times each, 2026-11-29 20:09 (docs/benchmarks.md):

    for i in 1 2 3; do for v in .venv .venv-peer-oumi; do $v/bin/python THIS MODEL_DIR; done; done
"""

import statistics
import sys
import time

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="sdpa")
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                         task_type="CAUSAL_LM"))
model.train()
trained = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(trained, lr=1e-3)
ids = torch.randint(0, model.config.vocab_size, (8, 59), generator=torch.Generator().manual_seed(0))
labels = ids.clone()
labels[:, :50] = -100
times = []
for i in range(70):
    t = time.perf_counter()
    model(input_ids=ids, labels=labels).loss.backward()
    torch.nn.utils.clip_grad_norm_(trained, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    if i >= 10:
        times.append(time.perf_counter() - t)
print(f"{transformers.__version__} median {1000 * statistics.median(times):.1f} ms  p10 {1000 * sorted(times)[6]:.1f}")
