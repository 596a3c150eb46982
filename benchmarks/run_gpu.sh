#!/usr/bin/env bash
# Everything owed on a GPU, in one batch (GPU time is short). Run from the repo root on a
# machine with a CUDA torch and nvcc:  OUT=benchmarks/results bash benchmarks/run_gpu.sh
# Writes logs and pytest-benchmark JSON (with hardware and versions) under $OUT.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"; nvcc --version; } > "$OUT/gpu-env.txt" 2>&1
# build the CUDA ops in place (sm_90 for Hopper; the default list is 8.0;9.0)
python3 setup.py build_ext --inplace > "$OUT/gpu-build.log" 2>&1 || echo "build failed: see gpu-build.log"
python3 -c "import mtt_fast.backends as b; print(b.report())" >> "$OUT/gpu-env.txt" 2>&1
# every test, CUDA parity included (Triton runs compiled on the GPU: TRITON_INTERPRET unset)
python3 -m pytest tests -q -x -p no:cacheprovider > "$OUT/gpu-tests.log" 2>&1
tail -5 "$OUT/gpu-tests.log"
export MTT_FAST_BENCH_DEVICE=cuda
python3 -m pytest benchmarks/test_bench_dsa.py --benchmark-only -q -s \
  --benchmark-json "$OUT/dsa-cuda.json" > "$OUT/dsa-cuda.log" 2>&1
python3 -m pytest benchmarks/test_bench_zca.py --benchmark-only -q -s \
  --benchmark-json "$OUT/zca-cuda.json" > "$OUT/zca-cuda.log" 2>&1
python3 -m pytest benchmarks/test_bench_matching.py --benchmark-only -q -s \
  --benchmark-json "$OUT/matching-cuda.json" > "$OUT/matching-cuda.log" 2>&1
# the student step at the CIFAR-10 IPC 10 preset (30 steps): time, memory, split, launches
MTT_FAST_BENCH_STUDENT_FULL=1 python3 -m pytest benchmarks/test_bench_student.py --benchmark-only -q -s \
  --benchmark-json "$OUT/student-cuda.json" > "$OUT/student-cuda.log" 2>&1
grep -hE "\[student|\[split\]|\[launches\]|^  (original|unroll|checkpoint)" "$OUT/student-cuda.log" | tail -20
grep -hE "\[gpu\]|\[memory\]|\[time\]|speedup|geomean|bandwidth" "$OUT"/*.log | tail -60
