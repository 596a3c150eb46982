#!/usr/bin/env bash
# MNIST at the paper's width (ConvNet width 128, depth 3, 28x28 padded as the original),
# the paper's evaluation (learned lr, DSA, 1000 epochs, 5 models; random and herding at lr
# 0.01), with fewer experts and iterations than the paper so it fits a 2-core CPU:
# 6 experts x 4 epochs (e.g. trained first by two `mtt-fast buffer` processes, 3 each),
# ITERATIONS iterations of SYN_STEPS student steps (500 for IPC 1). Resumable: run it again
# after an interruption (finished cells are kept, a distillation resumes from
# its checkpoint). Then merges the cell into benchmarks/results/fidelity-mnist.{json,md}
# (a row per IPC and command: the command records every setting below that was changed).
# Usage: bash benchmarks/fidelity/mnist.sh IPC [ITERATIONS]   (e.g. 1 500)
# Env: DATA (default ../shared/data), OUT (default runs/fidelity), THREADS (default 2),
# DEVICE (default cpu; cuda on a GPU), EVAL_IT (default 100), and the distillation's
# settings: SYN_STEPS (default 20), EXPERT_EPOCHS (2), MAX_START_EPOCH (2), LR_IMG (100),
# LR_LR (1e-5), LR_TEACHER (0.01, the learned lr's start), MATCHING (checkpoint; unroll is
# faster on a CPU, same gradient), BASELINES (random,herding; "" skips them: they do not
# depend on the distillation's settings, so a second row of the same IPC may leave them out).
set -euo pipefail
cd "$(dirname "$0")/../.."
IPC=${1:?usage: mnist.sh IPC [ITERATIONS]}
ITERATIONS=${2:-500}
OUT=${OUT:-runs/fidelity}
mtt-fast --threads "${THREADS:-2}" reproduce --dataset mnist --data-path "${DATA:-../shared/data}" \
  --device "${DEVICE:-cpu}" \
  --ipc "$IPC" --out "$OUT" --width 128 --depth 3 \
  --num-experts 6 --expert-epochs-train 4 \
  --max-start-epoch "${MAX_START_EPOCH:-2}" --expert-epochs "${EXPERT_EPOCHS:-2}" \
  --syn-steps "${SYN_STEPS:-20}" --iterations "$ITERATIONS" \
  --lr-img "${LR_IMG:-100}" --lr-lr "${LR_LR:-1e-5}" --lr-teacher "${LR_TEACHER:-0.01}" \
  --matching "${MATCHING:-checkpoint}" --baselines "${BASELINES-random,herding}" \
  --eval-it "${EVAL_IT:-100}" --checkpoint-it 10 --num-eval 5 --eval-epochs 1000 --no-progress
set_vars=""
for v in DEVICE SYN_STEPS EXPERT_EPOCHS MAX_START_EPOCH LR_IMG LR_LR LR_TEACHER MATCHING EVAL_IT; do
  if [ -n "${!v:-}" ]; then set_vars+="$v=${!v} "; fi
done
if [ "${BASELINES+set}" = set ]; then set_vars+="BASELINES=\"$BASELINES\" "; fi
python benchmarks/fidelity/table.py "$OUT" --cell "mnist/ipc$IPC" \
  --command "${set_vars}bash benchmarks/fidelity/mnist.sh $IPC $ITERATIONS"
