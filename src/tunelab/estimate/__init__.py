"""Estimators: memory (tokens per micro-batch), dataset measurement, batch size, time."""
