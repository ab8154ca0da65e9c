"""Base models: the tiny local builder (demo and tests) and resource checks of HF model dirs."""
