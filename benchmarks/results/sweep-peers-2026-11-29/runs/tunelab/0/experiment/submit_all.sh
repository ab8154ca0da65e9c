#!/usr/bin/env bash
# Train every run of "sweep-peers" one after another, then evaluate and report.
# Written by `tunelab scaffold`. `tunelab run .` (from this directory) does the same, skipping
# completed runs; this script is for people who want to see (and edit) every step. Every path is relative:
# the experiment directory can be copied or moved whole.
set -uo pipefail
cd "$(dirname "$0")"

echo "== smollm2_r8_lr0.0005"
bash runs/smollm2_r8_lr0.0005/job.sh >> runs/smollm2_r8_lr0.0005/train.log 2>&1 || echo "   smollm2_r8_lr0.0005 failed: see runs/smollm2_r8_lr0.0005/train.log"

echo "== smollm2_r8_lr0.002"
bash runs/smollm2_r8_lr0.002/job.sh >> runs/smollm2_r8_lr0.002/train.log 2>&1 || echo "   smollm2_r8_lr0.002 failed: see runs/smollm2_r8_lr0.002/train.log"

echo "== smollm2_r32_lr0.0005"
bash runs/smollm2_r32_lr0.0005/job.sh >> runs/smollm2_r32_lr0.0005/train.log 2>&1 || echo "   smollm2_r32_lr0.0005 failed: see runs/smollm2_r32_lr0.0005/train.log"

echo "== smollm2_r32_lr0.002"
bash runs/smollm2_r32_lr0.002/job.sh >> runs/smollm2_r32_lr0.002/train.log 2>&1 || echo "   smollm2_r32_lr0.002 failed: see runs/smollm2_r32_lr0.002/train.log"

"${TUNELAB_PYTHON:-/work/main/.venv/bin/python}" -m tunelab eval .
"${TUNELAB_PYTHON:-/work/main/.venv/bin/python}" -m tunelab report .
