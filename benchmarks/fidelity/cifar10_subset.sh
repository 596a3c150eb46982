#!/usr/bin/env bash
# The CIFAR-10 slice (../shared/data/cifar10-subset: 4,000 training and 1,000 test images of
# CIFAR-10) at the paper's width (ConvNet width 128, depth 3, ZCA, DSA; the paper's CIFAR-10
# preset for syn_steps / expert_epochs / max_start_epoch / lr) with far fewer experts
# (5 x 22 epochs) and iterations than the paper so it fits a 2-core CPU. A second real
# dataset, NOT comparable with the paper's CIFAR-10 numbers (4,000 instead of 50,000
# training images, 1,000 test images). Resumable: run it again after an interruption.
# Then merges the cell into benchmarks/results/fidelity-mnist.{json,md}.
# Usage: bash benchmarks/fidelity/cifar10_subset.sh IPC [ITERATIONS]
# Env: DATA (default ../shared/data), OUT (default runs/fidelity), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
IPC=${1:?usage: cifar10_subset.sh IPC [ITERATIONS]}
ITERATIONS=${2:-200}
OUT=${OUT:-runs/fidelity}
mtt-fast --threads "${THREADS:-2}" reproduce --dataset cifar10-subset --data-path "${DATA:-../shared/data}" \
  --device "${DEVICE:-cpu}" \
  --ipc "$IPC" --out "$OUT" --width 128 --depth 3 \
  --num-experts 5 --expert-epochs-train 22 \
  --iterations "$ITERATIONS" \
  --eval-it 100 --checkpoint-it 10 --num-eval 5 --eval-epochs 1000 --no-progress
python benchmarks/fidelity/table.py "$OUT" --cell "cifar10-subset/ipc$IPC" \
  --command "${DEVICE:+DEVICE=$DEVICE }bash benchmarks/fidelity/cifar10_subset.sh $IPC $ITERATIONS"
