"""A whole sweep through lm-eval's Python API in ONE process (run by lm-eval's own interpreter, never imported by
the benchmark): `python lmeval_sweep.py SWEEP.json` (written by lmeval.api_command).

lm-eval's CLI loads one model (+ one adapter) per process; this loads each base once, evaluates the base targets on
it, then wraps it in a PeftModel with every adapter of that base loaded and `set_adapter`s each in turn (HFLM takes
an already-built model). Each target's results and samples are written by lm-eval's own EvaluationTracker, the files
the CLI writes, under the target's own output folder, so one parser reads both ways."""

from __future__ import annotations

import json
import sys
import time
from itertools import groupby
from pathlib import Path

import torch
from lm_eval import simple_evaluate
from lm_eval.loggers import EvaluationTracker
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def evaluate(lm: HFLM, spec: dict, target: dict, tasks: TaskManager) -> None:
    """One target: lm-eval's simple_evaluate with the CLI's settings, saved as the CLI saves it."""
    start = time.monotonic()
    tracker = EvaluationTracker(output_path=target["out"])
    results = simple_evaluate(model=lm, tasks=[spec["task"]], task_manager=tasks, batch_size=spec["batch"],
                              apply_chat_template=True, fewshot_as_multiturn=True, log_samples=True,
                              evaluation_tracker=tracker, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                              fewshot_random_seed=0)
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    print(f"lmeval_sweep: {target['name']}: {results['results']} ({time.monotonic() - start:.1f} s)", flush=True)


def main(path: str) -> None:
    spec = json.loads(Path(path).read_text())
    tasks = TaskManager(include_path=spec["include_path"])
    targets = sorted(spec["targets"], key=lambda t: (t["base"], t["adapter"] is not None))
    for base, group in groupby(targets, key=lambda t: t["base"]):
        group = list(group)
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, device_map="cpu").eval()
        for target in (t for t in group if t["adapter"] is None):
            evaluate(HFLM(pretrained=model, tokenizer=tok, batch_size=spec["batch"]), spec, target, tasks)
        adapters = [t for t in group if t["adapter"] is not None]
        if not adapters:
            continue
        # PEFT's adapter names become module names, which may not hold a "." (a run named r8-lr0.002): by position
        peft_model = PeftModel.from_pretrained(model, adapters[0]["adapter"], adapter_name="a0")
        for i, target in enumerate(adapters[1:], start=1):
            peft_model.load_adapter(target["adapter"], adapter_name=f"a{i}")
        peft_model.eval()
        for i, target in enumerate(adapters):
            peft_model.set_adapter(f"a{i}")
            evaluate(HFLM(pretrained=peft_model, tokenizer=tok, batch_size=spec["batch"]), spec, target, tasks)


if __name__ == "__main__":
    main(sys.argv[1])
