"""One scorer for every tool's adapter: exact match of greedy answers on the held-out test rows.

The prompt is the model directory's own chat template over the row's system and user messages with the generation
prompt; generation stops at the tokenizer's eos (the template's end-of-turn token for both models here) or after
Job.max_new_tokens. Run in tunelab's environment (transformers + peft), in a process of its own so that one
adapter's memory never counts in another's run:

    python -m peerlib.score MODEL_DIR ADAPTER_DIR TEST_JSONL [--threads N]   ->  one JSON line
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BATCH = 16


def answers(model_dir: Path, adapter: Path | None, rows: list[dict], max_new_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    out: list[str] = []
    for i in range(0, len(rows), BATCH):
        prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
                   for r in rows[i:i + BATCH]]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for seq in gen[:, enc["input_ids"].shape[1]:]:
            out.append(tok.decode(seq, skip_special_tokens=True).strip())
    return out


def exact_match(model_dir: Path, adapter: Path | None, test: Path, max_new_tokens: int = 8) -> dict:
    rows = [json.loads(line) for line in test.read_text().splitlines() if line.strip()]
    got = answers(model_dir, adapter, rows, max_new_tokens)
    want = [r["messages"][-1]["content"].strip() for r in rows]
    hits = sum(g == w for g, w in zip(got, want))
    return {"accuracy": hits / len(rows), "samples": len(rows), "answers": got[:5]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("adapter", help="a PEFT adapter directory, or 'base'")
    ap.add_argument("test", type=Path)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    args = ap.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    adapter = None if args.adapter == "base" else Path(args.adapter)
    print(json.dumps(exact_match(args.model_dir, adapter, args.test, args.max_new_tokens)))


if __name__ == "__main__":
    sys.exit(main())
