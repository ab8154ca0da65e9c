"""The in-job entry point: `tunelab train run.yaml` (TRL SFTTrainer + PEFT LoRA).

It writes only into its run directory (metrics.jsonl, status.json, checkpoints/, summary.json);
the coordinating process ingests those files into the ledger.
"""
