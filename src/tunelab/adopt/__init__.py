"""adopt: runs trained elsewhere (HF Trainer, torchtune) become runs of a tunelab experiment."""
