"""tunelab: plan, run, evaluate and report sweeps of LoRA fine-tuning experiments."""

__version__ = "0.1.0"
