#!/usr/bin/env bash
# MNIST at the paper's width (ConvNet width 128, depth 3, 28x28 padded as the original),
# the paper's evaluation (learned lr, DSA, 1000 epochs, 5 models; random and herding at lr
# 0.01), with fewer experts and iterations than the paper so it fits a 2-core CPU:
# 6 experts x 4 epochs (e.g. trained first by two `mtt-fast buffer` processes, 3 each),
# ITERATIONS iterations of 20 student steps (500 for IPC 1). Resumable: run it again after
# an interruption (finished cells are kept, a distillation resumes from
# its checkpoint). Then merges the cell into benchmarks/results/fidelity-mnist.{json,md}.
# Usage: bash benchmarks/fidelity/mnist.sh IPC [ITERATIONS]   (e.g. 1 500)
# Env: DATA (default ../shared/data), OUT (default runs/fidelity), THREADS (default 2),
# DEVICE (default cpu; cuda on a GPU),
# LR_IMG (default 100), EVAL_IT (default 100).
set -euo pipefail
cd "$(dirname "$0")/../.."
IPC=${1:?usage: mnist.sh IPC [ITERATIONS]}
ITERATIONS=${2:-500}
OUT=${OUT:-runs/fidelity}
mtt-fast --threads "${THREADS:-2}" reproduce --dataset mnist --data-path "${DATA:-../shared/data}" \
  --device "${DEVICE:-cpu}" \
  --ipc "$IPC" --out "$OUT" --width 128 --depth 3 \
  --num-experts 6 --expert-epochs-train 4 \
  --max-start-epoch 2 --expert-epochs 2 --syn-steps 20 --iterations "$ITERATIONS" \
  --lr-img "${LR_IMG:-100}" --lr-lr 1e-5 --lr-teacher 0.01 \
  --eval-it "${EVAL_IT:-100}" --checkpoint-it 10 --num-eval 5 --eval-epochs 1000 --no-progress
python benchmarks/fidelity/table.py "$OUT" --cell "mnist/ipc$IPC" \
  --command "${DEVICE:+DEVICE=$DEVICE }${LR_IMG:+LR_IMG=$LR_IMG }${EVAL_IT:+EVAL_IT=$EVAL_IT }bash benchmarks/fidelity/mnist.sh $IPC $ITERATIONS"
