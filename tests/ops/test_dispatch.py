"""The one dispatcher (:mod:`mtt_fast.backends`): precedence, dtype-aware auto, errors, an op
plugged in by registering alone, the report behind ``mtt-fast info``, and the
``MTT_FAST_REQUIRE_EXT`` switch of the test suite."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from mtt_fast import _ext, backends

ROOT = Path(__file__).resolve().parents[2]
F16, F32, F64 = torch.float16, torch.float32, torch.float64


@pytest.fixture
def toy(monkeypatch):
    """A new op ``toy`` declared the way an op package does it: three fake launcher modules;
    its ``native`` takes float32 only and is there on CPU; Triton runs everywhere (as under
    the interpreter) but is implicit on CUDA only. The registry is restored afterwards."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setattr(backends, "_MODULES", dict(backends._MODULES))
    for name in ("native", "triton", "torch"):
        mod = types.ModuleType(f"_toy_{name}")
        mod.run = lambda x, _n=name: (_n, x)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    backends.register(
        "toy",
        backends.Backend("native", "_toy_native", (F32,),
                         runtime=lambda d: None if d == "cpu" else "not built for " + d),
        backends.Backend("triton", "_toy_triton", (F16, F32, F64), auto_devices=("cuda",)),
        backends.Backend("torch", "_toy_torch", (F16, F32, F64)),
    )
    monkeypatch.delenv(backends.ENV, raising=False)
    return "toy"


def test_auto_picks_by_device_and_dtype(toy):
    assert backends.resolve(toy, None, "cpu", F32) == "native"
    assert backends.resolve(toy, "auto", "cpu", F16) == "torch"  # native rejects it; triton not implicit on CPU
    assert backends.resolve(toy, "auto", "cpu", F64) == "torch"
    assert backends.resolve(toy, "auto", "cuda", F32) == "triton"  # no native kernel for cuda
    assert backends.available(toy, "cpu") == ["native", "triton", "torch"]
    assert backends.available(toy, "cpu", F16) == ["triton", "torch"]


def test_precedence_argument_then_environment_then_auto(toy, monkeypatch):
    monkeypatch.setenv(backends.ENV, "triton")
    assert backends.resolve(toy, None, "cpu", F32) == "triton"
    assert backends.resolve(toy, "native", "cpu", F32) == "native"
    assert backends.resolve(toy, "auto", "cpu", F32) == "native"
    assert backends.resolve(toy, "reference", "cpu", F32) == "torch"  # alias
    monkeypatch.setenv(backends.ENV, "native")
    with pytest.raises(ValueError, match=r"^backend 'native' \(from MTT_FAST_BACKEND\) is not"):
        backends.resolve(toy, None, "cpu", F16)


def test_explicit_errors_are_one_line_and_list_what_is_available(toy):
    with pytest.raises(ValueError) as err:
        backends.resolve(toy, "native", "cpu", F16)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        "backend 'native' is not available for op 'toy' on cpu float16 tensors "
        "(it takes float32); available: triton, torch"
    )
    with pytest.raises(ValueError, match=r"on cuda float32 tensors \(not built for cuda\); "
                       r"available: triton, torch$"):
        backends.resolve(toy, "native", "cuda", F32)
    with pytest.raises(ValueError, match="^unknown backend 'warp' for op 'toy'; choose one of "
                       "auto, native, triton, torch$"):
        backends.resolve(toy, "warp", "cpu", F32)
    with pytest.raises(ValueError, match="^unknown op 'nope'; registered: "):
        backends.resolve("nope", None, "cpu")


def test_a_registered_op_dispatches_and_is_reported(toy):
    x = torch.zeros(2, dtype=F16)
    mod = backends.dispatch(toy, None, x)
    assert mod.run(x)[0] == "torch" and backends.last_used[toy] == "torch"
    assert backends.dispatch(toy, "triton", x).run(x)[0] == "triton"
    assert backends.last_used[toy] == "triton"
    rep = backends.report()
    assert rep[toy]["cpu"] == ["native", "triton", "torch"]
    assert {"dsa", "zca"} <= set(rep)
    assert backends.dtypes(toy, "native") == (F32,)


def test_the_ops_declare_their_dtypes():
    assert backends.dtypes("dsa", "native") == (F32, F64)
    assert set(backends.dtypes("dsa", "torch")) == {F16, torch.bfloat16, F32, F64}
    assert F64 not in backends.dtypes("zca", "native") + backends.dtypes("zca", "triton")
    assert torch.uint8 in backends.dtypes("zca", "native")


def test_missing_extension_leaves_the_reference(monkeypatch):
    monkeypatch.setattr(_ext, "has_kernel", lambda op, device_type: False)
    monkeypatch.delenv(backends.ENV, raising=False)
    assert "native" not in backends.available("dsa", "cpu")
    assert backends.resolve("dsa", None, "cpu", F32) == "torch"
    with pytest.raises(ValueError, match=r"^backend 'native' is not available") as err:
        backends.resolve("zca", "native", "cpu", torch.uint8)
    listed = str(err.value).rsplit("available: ", 1)[1].split(", ")
    assert "torch" in listed and "native" not in listed


def test_require_ext_turns_a_missing_extension_into_failures():
    """With the extension switched off, a native test skips, unless MTT_FAST_REQUIRE_EXT=1
    (CI), where it fails."""
    target = "tests/ops/test_dsa.py::test_opcheck[dsa_flip]"
    env = dict(os.environ, MTT_FAST_NO_EXT="1")
    env.pop("MTT_FAST_REQUIRE_EXT", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout + res.stderr
    env["MTT_FAST_REQUIRE_EXT"] = "1"
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "1 failed" in res.stdout, res.stdout + res.stderr
    assert "MTT_FAST_REQUIRE_EXT=1 but the compiled extension is missing" in res.stdout
