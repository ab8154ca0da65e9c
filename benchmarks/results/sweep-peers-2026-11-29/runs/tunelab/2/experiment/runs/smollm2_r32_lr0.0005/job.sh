#!/usr/bin/env bash
# Training job for run "smollm2_r32_lr0.0005" of experiment "sweep-peers".
# Written by `tunelab scaffold`; edit freely. Everything about the run is in run.yaml.
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1
exec "${TUNELAB_PYTHON:-/work/main/.venv/bin/python}" -m tunelab.train.job run.yaml
