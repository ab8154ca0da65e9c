"""Executors: hand run directories to something that runs them (local processes, Slurm) behind one interface."""
