"""`tunelab init`: from models and data on disk to an experiment.yaml that `tunelab plan` accepts."""
