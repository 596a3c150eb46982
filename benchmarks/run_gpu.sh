#!/usr/bin/env bash
# Everything owed on a GPU, in one batch of at most ~28 minutes (each phase under 10), so
# that GPU time goes to measuring, not to setup. Run from the repo root on a machine with
# a CUDA torch, triton, pytest-benchmark and nvcc (no network needed, nothing installed):
#
#   bash benchmarks/run_gpu.sh                 # all phases, results in benchmarks/results/
#   bash benchmarks/run_gpu.sh tests           # some phases (build runs first if needed)
#   OUT=/some/dir PYTHON=python3 bash benchmarks/run_gpu.sh
#   DRY_RUN=1 PYTHON=/path/to/cuda-venv/bin/python bash benchmarks/run_gpu.sh
#       on a machine without a GPU: builds the CUDA ops, checks that every package and
#       module the phases need imports and that every test and benchmark collects.
#
# Phases (time limit):
#   env       GPU, driver, versions                                  -> gpu-env.txt
#   build     CUDA ops in place (default archs, MTT_FAST_BUILD_STRICT=1) + `mtt-fast info`
#                                                          (4 min)   -> gpu-build.log
#   tests     the whole suite on the GPU: CUDA parity of the compiled and Triton ops, the
#             GPU-path iterations (7 min)                          -> gpu-tests.log/.json
#   dsa       DSA fwd+bwd, reference vs compiled vs Triton (4 min)   -> dsa-cuda.json/.log
#   zca       ZCA apply on 10k CIFAR images: time, bandwidth vs the device's copy
#             bandwidth (2.5 min)                                   -> zca-cuda.json/.log
#   matching  time and peak memory per iteration, checkpoint vs unroll, for the CIFAR-10
#             IPC 10 and CIFAR-100 IPC 50 presets, and memory vs syn_steps (6 min)
#                                                                   -> matching-cuda.json/.log
#   student   the student step at the CIFAR-10 IPC 10 preset (30 steps), original path vs
#             the fused ConvNet block: time, peak memory, split of an iteration, kernel
#             launches per step (5 min)                             -> student-cuda.json/.log
#             (the test also writes benchmarks/results/student-cuda-30steps.json)
# At most 8 result files per phase group, 2 per phase (a lent machine returns 8 a call):
# e.g. `env build tests`, then `dsa zca`, then `matching`, then `student`.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
DRY=${DRY_RUN:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MTT_FAST_CACHE="$PWD/build/mtt-fast-cache" MTT_FAST_JIT=0
unset TRITON_INTERPRET MTT_FAST_BACKEND MTT_FAST_NO_EXT
PHASES=${*:-env build tests dsa zca matching student}
status=0
note() { echo "[run_gpu $(date +%T)] $*"; }
limit() { local s=$1; shift; timeout --signal=INT --kill-after=30 "$s" "$@"; }

phase_env() {
  { date -u; nvidia-smi 2>&1 || echo "nvidia-smi: not available";
    "$PY" -c "import torch, triton, platform; print('python', platform.python_version()); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); \
print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)";
    nvcc --version 2>&1 | tail -2; } > "$OUT/gpu-env.txt" 2>&1
  cat "$OUT/gpu-env.txt"
}

phase_build() {
  if [ -n "$(ls mtt_fast/_C*.so 2>/dev/null)" ] && "$PY" -c "import json,sys; \
i=json.load(open('mtt_fast/_C.build.json')); sys.exit(0 if i.get('cuda') else 1)" 2>/dev/null; then
    note "build: CUDA ops already built in place"
  else
    MTT_FAST_BUILD_STRICT=1 limit 240 "$PY" setup.py build_ext --inplace > "$OUT/gpu-build.log" 2>&1 \
      || { note "build FAILED: see $OUT/gpu-build.log"; tail -20 "$OUT/gpu-build.log"; return 1; }
  fi
  "$PY" -m mtt_fast.cli info 2>&1 | tee -a "$OUT/gpu-build.log" | sed -n '/compiled ops/,$p'
}

phase_tests() {
  limit 420 "$PY" -m pytest tests -q -m "not slow" -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml" > "$OUT/gpu-tests.log" 2>&1
  local rc=$?
  "$PY" - "$OUT" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
s = ET.parse(f"{out}/gpu-tests.xml").getroot()
s = s if s.tag == "testsuite" else s[0]
cases = [{"test": f"{c.get('classname')}::{c.get('name')}", "seconds": float(c.get("time", 0)),
          "outcome": next((t.tag for t in c if t.tag in ("failure", "error", "skipped")), "passed"),
          "why": next((t.get("message", "")[:300] for t in c), "")} for c in s.iter("testcase")]
summary = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failure", "error", "skipped")}
json.dump({"summary": summary, "cases": cases}, open(f"{out}/gpu-tests.json", "w"), indent=1)
print(summary)
EOF
  rm -f "$OUT/gpu-tests.xml"
  tail -3 "$OUT/gpu-tests.log"
  return $rc
}

bench() {  # name, seconds, pytest args...
  local name=$1 secs=$2; shift 2
  MTT_FAST_BENCH_DEVICE=cuda limit "$secs" "$PY" -m pytest "$@" --benchmark-only -q -s \
    -p no:cacheprovider --benchmark-json "$OUT/$name-cuda.json" > "$OUT/$name-cuda.log" 2>&1
  local rc=$?
  grep -hE "\[gpu\]|\[memory\]|\[time\]|speedup|geometric|passed|failed|skipped" \
    "$OUT/$name-cuda.log" | tail -40
  return $rc
}
phase_dsa() { bench dsa 240 benchmarks/test_bench_dsa.py; }
phase_zca() {
  bench zca 150 benchmarks/test_bench_zca.py
  "$PY" - "$OUT/zca-cuda.json" <<'EOF'
import json, sys
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    i = b["extra_info"]
    print(f"[zca] {i['backend']:>7s} {b['params']['dtype']:>8s}: {b['stats']['mean'] * 1e3:8.2f} ms "
          f"{i['bandwidth_GBps']:8.1f} GB/s = {i.get('fraction_of_copy_bandwidth', 0):.2f} of copy "
          f"({i.get('copy_bandwidth_GBps', 0):.0f} GB/s), peak {i.get('peak_bytes', 0) / 2**20:.0f} MiB")
EOF
}
phase_matching() {
  MTT_FAST_BENCH_STEPS=10,20,40,80 bench matching 360 benchmarks/test_bench_matching.py \
    -k "preset or memory"
}
phase_student() {
  MTT_FAST_BENCH_STUDENT_FULL=1 bench student 300 benchmarks/test_bench_student.py
  local rc=$?
  grep -hE "\[student|\[split\]|\[launches\]|^  (original|unroll|checkpoint|auto) " \
    "$OUT/student-cuda.log" | tail -30
  return $rc
}

dry_run() {
  note "DRY RUN with $PY (no GPU needed): build, imports, collection"
  phase_env
  phase_build || status=1
  "$PY" - <<'EOF' || status=1
import importlib
need = ["torch", "triton", "pytest", "pytest_benchmark", "psutil", "numpy", "scipy",
        "safetensors", "sklearn", "PIL", "tqdm", "ninja", "setuptools",
        "mtt_fast", "mtt_fast.ops.dsa.triton", "mtt_fast.ops.zca.triton",
        "mtt_fast.ops.dsa.native", "mtt_fast.ops.zca.native", "mtt_fast.matching",
        "mtt_fast.ops.norm_block.triton", "mtt_fast.ops.norm_block.native",
        "mtt_fast.ops.conv2d",
        "mtt_fast.distillation", "mtt_fast._jit"]
bad = []
for m in need:
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        bad.append(f"{m}: {type(e).__name__}: {e}")
import torch
from mtt_fast import _ext
assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
ops = _ext.registered()
assert ops and all("cuda" in v for v in ops.values()), f"no CUDA kernels: {ops}"
print("imports:", "all ok" if not bad else "MISSING " + "; ".join(bad))
raise SystemExit(1 if bad else 0)
EOF
  for f in tests benchmarks/test_bench_dsa.py benchmarks/test_bench_zca.py \
           benchmarks/test_bench_matching.py benchmarks/test_bench_student.py; do
    MTT_FAST_BENCH_DEVICE=cuda "$PY" -m pytest "$f" --collect-only -q -p no:cacheprovider \
      > "$OUT/collect.log" 2>&1
    local rc=$?
    # 5: nothing collected (a benchmark module skipped itself: no GPU here)
    if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then note "collect FAILED: $f"; tail -15 "$OUT/collect.log"; status=1
    else note "collect ok: $f ($(grep -cE '::' "$OUT/collect.log") items)"; fi
  done
  rm -f "$OUT/collect.log"
  note "dry run $([ $status -eq 0 ] && echo OK || echo FAILED)"
  exit $status
}

[ "$DRY" = "1" ] && dry_run
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { note "no GPU visible to $PY (use DRY_RUN=1 to check the setup)"; exit 2; }
for p in $PHASES; do
  case $p in env|build|tests|dsa|zca|matching|student) ;; *) note "unknown phase $p"; exit 2;; esac
  [ "$p" != build ] && [ "$p" != env ] && case " $PHASES " in *" build "*) ;; *)
    phase_build > /dev/null || { status=1; continue; } ;; esac
  note "phase $p"
  t=$SECONDS
  "phase_$p" || { status=1; note "phase $p FAILED"; }
  note "phase $p took $((SECONDS - t)) s"
done
exit $status
