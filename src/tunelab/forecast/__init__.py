"""Time prediction: how long each run, evaluation, job start and the whole sweep take, and what a deadline gives."""
