"""The learning-rate search of a spec's `tune:` block (`tunelab tune`): per combination of factor levels, Optuna
trials that are real runs on the sweep's executor, pruned on their validation loss; the best rate goes into the
combination's runs (plan/tuned.py reads tune/best.json; rundir/tuned.py groups the runs)."""
