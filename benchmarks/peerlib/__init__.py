"""benchmarks/peers.py's parts: the one job every tool runs (job.py), how a run is measured from outside
(measure.py), one exact-match scorer for every adapter (score.py), and one module per tool that writes its config,
starts it and parses its own log (tunelab_side.py, torchtune.py, llamafactory.py, axolotl.py, oumi.py, lmeval.py).

A peer module is run by tunelab's Python (the benchmark's), never imported into the peer's environment: it only
writes files and builds a command line for the peer's own interpreter (scripts/peer-env NAME)."""
