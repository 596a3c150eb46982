"""Build checks: the CUDA kernels compile with the machine's CUDA toolkit (CMake, no torch
needed), and the package works without its compiled part."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
    reason="no CUDA toolkit (nvcc) on this machine",
)
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cuda_kernels_compile_with_cmake(tmp_path):
    """Configure + build CMakeLists.txt (every csrc/cuda/*.cu for sm_80 and sm_90)."""
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    env = dict(os.environ)
    if shutil.which("nvcc") is None:
        env["CUDACXX"] = "/usr/local/cuda/bin/nvcc"
    cfg = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path), *gen, "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    build = subprocess.run(
        ["cmake", "--build", str(tmp_path), "-j", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    libs = list(tmp_path.glob("*mtt_fast_kernels*"))
    assert libs, f"no library built in {tmp_path}: {os.listdir(tmp_path)}"


def test_pure_python_without_extension():
    """MTT_FAST_NO_EXT=1 (the runtime twin of MTT_FAST_BUILD_EXT=0): imports work, auto
    picks the reference, and the native functions raise a clear error."""
    code = """
import torch, mtt_fast
from mtt_fast import _ext, backends
from mtt_fast.ops.dsa import native
assert not _ext.load() and "MTT_FAST_NO_EXT" in _ext.load_error()
assert backends.available("dsa", "cpu") == ["torch"], backends.available("dsa", "cpu")
x = torch.randn(2, 3, 8, 8)
p = mtt_fast.augment.sample(2, generator=torch.Generator().manual_seed(0))
mtt_fast.augment.apply(x, p)
assert backends.last_used["dsa"] == "torch"
try:
    native.flip(x, torch.tensor([True, False]))
except RuntimeError as e:
    assert "unavailable" in str(e)
else:
    raise AssertionError("native op ran without the extension")
"""
    env = dict(os.environ, MTT_FAST_NO_EXT="1", MTT_FAST_BACKEND="auto", TRITON_INTERPRET="0")
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_setup_skips_extension_when_asked():
    """MTT_FAST_BUILD_EXT=0: setup.py declares no extension (no compiler is run)."""
    code = (
        "import runpy, sys, setuptools\n"
        "seen = {}\n"
        "setuptools.setup = lambda **kw: seen.update(kw)\n"
        "sys.argv = ['setup.py', '--version']\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
        "assert seen['ext_modules'] == [], seen['ext_modules']\n"
        "assert seen['entry_points']['console_scripts'] == ['mtt-fast=mtt_fast.cli:main']\n"
    )
    env = dict(os.environ, MTT_FAST_BUILD_EXT="0")
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
