"""The training job: `python -m tunelab.train.job RUN_YAML` (job.py; `tunelab train run.yaml` runs it),
TRL SFTTrainer + PEFT LoRA.

It writes only into its run directory, through tunelab.rundir (status.json, metrics.jsonl, checkpoints/,
stages.json, summary.json); the coordinating process ingests those files into the ledger. Nothing outside
this package imports it: what both sides share is tunelab.rundir, the configs (spec/, rundir/config.py) and
tunelab.device.
"""
