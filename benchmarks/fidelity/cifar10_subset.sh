#!/usr/bin/env bash
# The 4,000-image CIFAR-10 slice (../shared/data/cifar10-subset) as a second real dataset:
# ConvNet width 128 on ZCA-whitened images as the CIFAR-10 presets, shortened for a 2-core
# CPU (5 experts x 11 epochs, start epochs < 10, 10 student steps, 200 iterations). Its
# numbers are NOT comparable with the paper's (4,000 training images, not 50,000).
# Usage: bash benchmarks/fidelity/cifar10_subset.sh [IPCS]   (default 1,10). Resumable.
set -euo pipefail
cd "$(dirname "$0")/../.."
IPCS=${1:-1,10}
OUT=${OUT:-runs/fidelity}
mtt-fast --threads "${THREADS:-2}" reproduce --dataset cifar10-subset --data-path "${DATA:-../shared/data}" \
  --ipc "$IPCS" --out "$OUT" --width 128 --depth 3 --zca \
  --num-experts 5 --expert-epochs-train 11 \
  --max-start-epoch 10 --expert-epochs 2 --syn-steps 10 --iterations 200 \
  --eval-it 100 --checkpoint-it 10 --num-eval 5 --eval-epochs 1000 --no-progress
cp "$OUT/table.json" benchmarks/results/fidelity-cifar10-subset.json
cp "$OUT/table.md" benchmarks/results/fidelity-cifar10-subset.md
