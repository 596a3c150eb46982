#!/usr/bin/env bash
# MNIST at the paper's width (ConvNet width 128, depth 3, 28x28 padded as the original),
# the paper's evaluation (learned lr, DSA, 1000 epochs, 5 models; random and herding at lr
# 0.01), with fewer experts and iterations than the paper so it fits a 2-core CPU:
# 5 experts x 4 epochs, 500 iterations of 20 student steps. Resumable: run it again after
# an interruption (finished cells are kept, a distillation resumes from its checkpoint).
# Usage: bash benchmarks/fidelity/mnist.sh [IPCS]   (default 1; e.g. 1,10)
# Env: DATA (default ../shared/data), OUT (default runs/fidelity), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
IPCS=${1:-1}
OUT=${OUT:-runs/fidelity}
mtt-fast --threads "${THREADS:-2}" reproduce --dataset mnist --data-path "${DATA:-../shared/data}" \
  --ipc "$IPCS" --out "$OUT" --width 128 --depth 3 \
  --num-experts 5 --expert-epochs-train 4 \
  --max-start-epoch 2 --expert-epochs 2 --syn-steps 20 --iterations 500 \
  --lr-img 100 --lr-lr 1e-5 --lr-teacher 0.01 \
  --eval-it 250 --checkpoint-it 10 --num-eval 5 --eval-epochs 1000 --no-progress
cp "$OUT/table.json" benchmarks/results/fidelity-mnist.json
cp "$OUT/table.md" benchmarks/results/fidelity-mnist.md
echo "wrote benchmarks/results/fidelity-mnist.{json,md}"
