"""Packaging, as a user gets it: ``python -m build`` makes an sdist (with csrc/) and a
wheel (carrying csrc/ as ``mtt_fast/_csrc``); each installs with build isolation (as
``pip install mtt-fast`` from an index does) into a fresh venv that has only the local CPU
torch, and there gets its compiled ops: the wheel by compiling them on first use in the
background, the sdist with ``mtt-fast build-ops``. Both then run the native ops and match
the reference.

Slow (two venvs, two compiles: several minutes on 2 cores). The venvs install torch from
the local file (``pip install torch==2.13.0``) under a constraint that pins it, so pip can
never fetch a CUDA torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                       reason="needs a git checkout to copy the tracked files"),
    pytest.mark.skipif(__import__("importlib").util.find_spec("build") is None,
                       reason="the `build` package is not installed (pip install build)"),
]

SMOKE = r"""
import json, sys, torch, mtt_fast, mtt_fast.ops.zca
from mtt_fast import _ext, backends
from mtt_fast.ops.dsa import reference as ref
g = torch.Generator().manual_seed(0)
x = torch.randn(4, 3, 16, 16, generator=g)
p = mtt_fast.augment.sample(4, generator=g)
want = mtt_fast.augment.apply(x, p, backend="torch")
out = {"file": mtt_fast.__file__, "loaded": _ext.load(), "origin": _ext.origin()["origin"],
       "kernels": _ext.registered()}
if out["loaded"]:
    got = mtt_fast.augment.apply(x, p, backend="native")
    out["dsa_err"] = float((got - want).abs().max())
    m = torch.randn(3 * 16 * 16, 3 * 16 * 16, generator=g, dtype=torch.float64).float()
    mean = torch.rand(3 * 16 * 16, generator=g)
    xz = torch.randint(0, 256, (4, 3, 16, 16), generator=g, dtype=torch.uint8)
    a = mtt_fast.ops.zca.zca_apply(xz, mean, m, backend="native")
    b = mtt_fast.ops.zca.zca_apply(xz, mean, m, backend="torch")
    out["zca_err"] = float((a - b).abs().max() / b.abs().max())
else:
    mtt_fast.augment.apply(x, p)  # first use: starts the build
    out["used"] = backends.last_used["dsa"]
print(json.dumps(out))
"""


def _run(cmd, cwd=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MTT_FAST_", "PYTHON", "VIRTUAL_ENV", "TRITON_"))}
    env.update(MTT_FAST_CACHE=str(tmp / "cache"), PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """sdist and wheel from ``python -m build`` on a copy of the tracked files (so no
    in-place build of this checkout leaks in)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                 cwd=ROOT).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", tmp / "dist", src],
         env=_env(tmp), timeout=900)
    sdist = next((tmp / "dist").glob("mtt_fast-*.tar.gz"))
    wheel = next((tmp / "dist").glob("mtt_fast-*.whl"))
    return {"sdist": sdist, "wheel": wheel, "tmp": tmp}


@pytest.fixture(scope="module")
def torch_venv(artifacts) -> Path:
    """A fresh venv holding only the local CPU torch (copied per test: each gets its own)."""
    v = artifacts["tmp"] / "venv-torch"
    _run([sys.executable, "-m", "venv", v])
    (artifacts["tmp"] / "pin.txt").write_text(TORCH_PIN + "\n")
    _run([v / "bin" / "python", "-m", "pip", "install", "-q", "-c",
          artifacts["tmp"] / "pin.txt", TORCH_PIN], env=_env(artifacts["tmp"]))
    return v


def _venv_with(artifacts, torch_venv: Path, name: str) -> tuple[Path, dict]:
    v = artifacts["tmp"] / f"venv-{name}"
    shutil.copytree(torch_venv, v, symlinks=True)
    # a copied venv: rewrite its own paths (pyvenv.cfg and script shebangs name the old one)
    for f in [v / "pyvenv.cfg", *(v / "bin").iterdir()]:
        if f.is_file() and not f.is_symlink():
            try:
                txt = f.read_text()
            except UnicodeDecodeError:
                continue
            f.write_text(txt.replace(str(torch_venv), str(v)))
    tmp = artifacts["tmp"] / f"home-{name}"
    tmp.mkdir()
    env = _env(tmp)
    _run([v / "bin" / "python", "-m", "pip", "install", "-q", "-c", artifacts["tmp"] / "pin.txt",
          artifacts[name]], env=env)
    return v, env


def test_sdist_and_wheel_contents(artifacts):
    csrc = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*")
                  if p.is_file() and p.suffix in (".cpp", ".h", ".cu", ".cuh"))
    assert csrc, "no csrc files?"
    with tarfile.open(artifacts["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert set(csrc) <= names, set(csrc) - names
    assert {"setup.py", "pyproject.toml", "mtt_fast/_build.py", "mtt_fast/_jit.py"} <= names
    assert not any(n.endswith((".so", ".o")) for n in names)
    with zipfile.ZipFile(artifacts["wheel"]) as z:
        wnames = set(z.namelist())
    carried = {"mtt_fast/_csrc/" + c.split("/", 1)[1] for c in csrc}
    assert carried <= wnames, carried - wnames
    # built in isolation (no torch there): no prebuilt extension, a pure wheel
    assert not any(n.endswith(".so") for n in wnames)
    assert artifacts["wheel"].name.endswith("-py3-none-any.whl")


def test_wheel_compiles_its_ops_on_first_use(artifacts, torch_venv):
    v, env = _venv_with(artifacts, torch_venv, "wheel")
    py = v / "bin" / "python"
    cwd = artifacts["tmp"]  # not the checkout: import the installed package
    info = _run([v / "bin" / "mtt-fast", "info"], cwd=cwd, env=env).stdout
    assert "compiled ops: none loaded" in info and "mtt-fast build-ops" in info, info
    first = _run([py, "-c", SMOKE], cwd=cwd, env=env)
    out = json.loads(first.stdout.strip().splitlines()[-1])
    assert str(v) in out["file"], out
    assert not out["loaded"] and out["used"] == "torch", out
    assert "in the background" in first.stderr, first.stderr
    cache = Path(env["MTT_FAST_CACHE"])
    deadline = time.time() + 600
    while time.time() < deadline and not list(cache.glob("ops/*/build.json")):
        if list(cache.glob("ops/*/failed.json")):
            pytest.fail((next(cache.glob("ops/*/build.log"))).read_text()[-3000:])
        time.sleep(5)
    assert list(cache.glob("ops/*/build.json")), "the background build did not finish"
    out = json.loads(_run([py, "-c", SMOKE], cwd=cwd, env=env).stdout.strip().splitlines()[-1])
    assert out["loaded"] and out["origin"] == "cache", out
    assert all(v == ["cpu"] for v in out["kernels"].values()) and len(out["kernels"]) >= 8
    assert out["dsa_err"] < 1e-5 and out["zca_err"] < 1e-5, out


def test_sdist_installs_and_build_ops(artifacts, torch_venv):
    v, env = _venv_with(artifacts, torch_venv, "sdist")
    cwd = artifacts["tmp"]
    res = _run([v / "bin" / "mtt-fast", "build-ops", "--quiet"], cwd=cwd, env=env)
    assert "built in" in res.stdout, res.stdout + res.stderr
    out = json.loads(_run([v / "bin" / "python", "-c", SMOKE], cwd=cwd, env=env)
                     .stdout.strip().splitlines()[-1])
    assert out["loaded"] and out["origin"] == "cache", out
    assert out["dsa_err"] < 1e-5 and out["zca_err"] < 1e-5, out
    n = len(out["kernels"])
    info = _run([v / "bin" / "mtt-fast", "info"], cwd=cwd, env=env).stdout
    assert f"cpu : {n}/{n} ops" in info and "nothing missing" in info, info
    assert "compiled ops: " + str(Path(env["MTT_FAST_CACHE"])) in info, info
