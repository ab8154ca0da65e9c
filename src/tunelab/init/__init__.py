"""`tunelab init`: from models and data on disk to an experiment.yaml that `tunelab plan` accepts.

answers.py turns answers (flags or prompts) into a validated spec; discover.py finds what is on disk;
interactive.py asks the plan-runs questions in a terminal.
"""
