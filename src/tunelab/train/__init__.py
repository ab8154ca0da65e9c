"""The training job: `python -m tunelab.train.job RUN_YAML` (`tunelab train run.yaml` runs it), TRL SFTTrainer + PEFT
LoRA. It writes only into its run directory, through tunelab.rundir; the coordinating process ingests those files.
Nothing outside this package imports it."""

# What a training process (the job, the probe's steps) imports, imported first thing in its `main` with the
# garbage collector paused (tunelab/host/startup.py); their modules import none of it at the top, so `main` decides.
TRAINING_STACK = ("torch", "transformers", "transformers.trainer", "peft", "datasets", "trl", "trl.trainer.sft_trainer",
                  "tunelab.train.runner", "tunelab.train.stages", "tunelab.train.trainer")
