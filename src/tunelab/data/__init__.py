"""Datasets: task generators, split loading and checks, prompt formatting shared by train and eval."""
