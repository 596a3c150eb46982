#!/usr/bin/env bash
# CI job (called by .ci/run): the CUDA build against a real CUDA torch, on a machine with
# the CUDA toolkit and no GPU. In a venv of its own (the CUDA torch, ~5.7 GB from this
# machine's local files), on a copy of the tracked files, with no CUDA_HOME set:
#   1. `pip install --no-build-isolation .` under MTT_FAST_BUILD_STRICT=1 (any fallback fails);
#      every op of the mtt_fast namespace has CPU and CUDA kernels; the library carries
#      cubins for sm_80, sm_90 (+ sm_100, sm_120 where nvcc has them) and PTX of the newest
#      (cuobjdump from the nvidia-cuda-cuobjdump package, and our own fatbin reader);
#   2. the same sources compiled on first use (mtt_fast._jit, --strict): the same kernels;
#   3. a CUDA compile failure (a broken .cu added) falls back to the CPU ops, and fails
#      under MTT_FAST_BUILD_STRICT=1;
#   4. the CPU test suite against the installed build (the slow packaging test excepted:
#      the main suite runs it).
# Took 21.5 min wall (9.5 min CPU) on this project's 2-core machine under a load average of
# ~8 from other jobs; its first three steps took 7.5 min on a lighter load.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset CUDA_HOME CUDA_PATH TORCH_CUDA_ARCH_LIST MTT_FAST_BUILD_EXT MTT_FAST_NO_EXT
CUDA_TORCH=${MTT_FAST_CUDA_TORCH:-torch==2.14.1}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mtt-cuda-ci.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export MTT_FAST_CACHE="$WORK/cache"   # hermetic: no compiled ops from the user's cache
t0=$SECONDS
step() { echo "[cuda-ci +$((SECONDS - t0))s] $*"; }

if ! python -c "import sys; sys.path.insert(0, 'mtt_fast'); import _build as B; \
    sys.exit(0 if B.find_cuda_toolkit(None)[0] else 1)"; then
  echo "[cuda-ci] SKIPPED: no CUDA toolkit (nvcc) on this machine"
  exit 0
fi

step "venv with $CUDA_TORCH"
python -m venv "$WORK/venv"
PY=$WORK/venv/bin/python
echo "$CUDA_TORCH" > "$WORK/pin.txt"   # pip can take no other torch
$PY -m pip install -q -c "$WORK/pin.txt" "$CUDA_TORCH" ninja numpy setuptools wheel pytest \
  pytest-benchmark scipy safetensors scikit-learn pillow tqdm psutil triton build \
  nvidia-cuda-cuobjdump 2>&1 | grep -v "^WARNING: Location" || true
$PY -c "import torch; assert torch.version.cuda, torch.__version__; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
CUOBJDUMP=$($PY -c "import glob, sys; print((glob.glob(sys.prefix + '/lib/python*/site-packages/nvidia/cu*/bin/cuobjdump') + [''])[0])")
[ -x "$CUOBJDUMP" ] || { echo "cuobjdump not found in the venv"; exit 1; }
export PATH="$(dirname "$CUOBJDUMP"):$PATH"

step "copy of the tracked files"
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -f "$f" ] && install -D -m 644 "$f" "$WORK/src/$f"
done
chmod +x "$WORK/src/.ci/"*.sh 2>/dev/null || true

step "1. pip install --no-build-isolation . (strict, no CUDA_HOME)"
(cd "$WORK/src" && MTT_FAST_BUILD_STRICT=1 $PY -m pip install -q --no-build-isolation --no-deps .) \
  2>&1 | grep -v "^WARNING: Location" || true
cat > "$WORK/check.py" <<'EOF'
"""Assert what a build holds: every op with CPU and CUDA kernels, the expected GPU code."""
import json, os, re, subprocess, sys
import torch
import mtt_fast
from mtt_fast import _build, _ext

lib = sys.argv[1] if len(sys.argv) > 1 else None
if lib:
    torch.ops.load_library(lib)
    ops = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("mtt_fast::")}
    reg = {n.split("::")[1]: [d for d, k in (("cpu", "CPU"), ("cuda", "CUDA"))
                              if torch._C._dispatch_has_kernel_for_dispatch_key(n, k)] for n in ops}
else:
    assert "site-packages" in mtt_fast.__file__, mtt_fast.__file__
    assert _ext.load(auto_build=False), _ext.load_error()
    assert _ext.origin()["origin"] == "prebuilt", _ext.origin()
    lib, reg = _ext.origin()["path"], _ext.registered()
    info = _ext.origin()["build"]
    assert info and info["cuda"] and not info["fallback"], info
    print("found the toolkit by:", info["cuda"]["found_by"])
assert len(reg) >= 8, reg
missing = {op: v for op, v in reg.items() if set(v) != {"cpu", "cuda"}}
assert not missing, f"ops without CPU and CUDA kernels: {missing}"
tk, _ = _build.find_cuda_toolkit(torch.version.cuda)
known = _build.nvcc_archs(tk)
want = [a for a in ("8.0", "9.0", "10.0", "12.0") if a in known]
sass = {f"sm_{a.replace('.', '')}" for a in want}
ptx = {f"compute_{want[-1].replace('.', '')}"}
listing = subprocess.run(["cuobjdump", "--list-elf", "--list-ptx", lib], capture_output=True,
                         text=True, check=True).stdout
got_sass = set(re.findall(r"\.(sm_\d+)\.cubin", listing))
got_ptx = {"compute_" + m for m in re.findall(r"\.sm_(\d+)\.ptx", listing)}
assert got_sass == sass and got_ptx == ptx, (listing, sass, ptx)
fat = _build.fatbin_archs(lib)
assert fat == {"sass": sorted(sass, key=lambda s: int(s[3:])), "ptx": sorted(ptx)}, fat
print(json.dumps({"library": lib, "ops": len(reg), "cubins": sorted(got_sass),
                  "ptx": sorted(got_ptx)}))
EOF
(cd "$WORK" && $PY check.py)
mtt_info() { (cd "$WORK" && "$WORK/venv/bin/mtt-fast" info); }
mtt_info | sed -n '/compiled ops/,$p'

step "2. the same sources compiled on first use (mtt_fast._jit --strict)"
(cd "$WORK" && MTT_FAST_CACHE="$WORK/jit" $PY -m mtt_fast._jit --strict --quiet | tail -1 | cut -c1-400)
(cd "$WORK" && $PY check.py "$(ls "$WORK"/jit/ops/*/mtt_fast_ops.so)")

step "3. a CUDA compile failure falls back to the CPU ops (and fails when strict)"
cp -r "$WORK/src" "$WORK/broken"
rm -rf "$WORK/broken/build"
echo '#error deliberately broken (.ci/cuda_build.sh)' > "$WORK/broken/csrc/cuda/aa_broken_kernels.cu"
if (cd "$WORK/broken" && MTT_FAST_BUILD_STRICT=1 $PY setup.py -q build_ext --inplace) \
    > "$WORK/strict.log" 2>&1; then
  echo "strict build of a broken .cu succeeded"; exit 1
fi
grep -q "MTT_FAST_BUILD_STRICT=1" "$WORK/strict.log" || { tail -20 "$WORK/strict.log"; exit 1; }
(cd "$WORK/broken" && env -u MTT_FAST_BUILD_STRICT $PY setup.py -q build_ext --inplace) > "$WORK/fallback.log" 2>&1 \
  || { tail -30 "$WORK/fallback.log"; exit 1; }
grep "WARNING (mtt-fast)" "$WORK/fallback.log" | cut -c1-200
(cd "$WORK/broken" && env -u MTT_FAST_BUILD_STRICT $PY - <<'EOF'
import json
from mtt_fast import _ext
assert _ext.load(auto_build=False) and _ext.origin()["origin"] == "prebuilt", _ext.load_error()
reg = _ext.registered()
assert len(reg) >= 8 and all(v == ["cpu"] for v in reg.values()), reg
info = _ext.origin()["build"]
assert info["cuda"] is None and "CUDA compile failed" in info["fallback"], info
print("fallback:", json.dumps(info["fallback"]), "->", len(reg), "ops with CPU kernels")
EOF
)

step "4. the CPU test suite against the installed CUDA build"
(cd "$WORK/src" && MTT_FAST_EXPECT_OPS=cpu,cuda "$WORK/venv/bin/pytest" tests -q -m "not slow" \
  -p no:cacheprovider -x)
step "done"
