"""Executors: hand run directories to something that runs them (local subprocesses; SLURM later)."""
