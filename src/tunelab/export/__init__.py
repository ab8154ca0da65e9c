"""Exports of an experiment to the trackers a lab already uses (MLflow; W&B refused until supported)."""
