"""How the build finds the CUDA toolkit and what it decides (mtt_fast/_build.py, setup.py),
on fake toolkits: an ``nvcc`` that is a wrapper script outside its toolkit (as on this
project's machines), a symlinked one, ``CUDA_HOME`` pointing nowhere, a toolkit of another
CUDA major, and the strict switch. No compiler runs here except in the fatbinary test,
which needs the machine's nvcc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtt_fast import _build as B

ROOT = Path(__file__).resolve().parents[1]


def _fake_toolkit(where: Path, version: str = "13.0", archs=(75, 80, 90, 100, 120)) -> Path:
    """A directory that looks like a CUDA toolkit to the build: bin/nvcc (a script that
    answers --version, --list-gpu-arch and --dryrun) and include/cuda_runtime.h."""
    root = where / f"cuda-{version}"
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("// fake\n")
    arch_lines = "\\n".join(f"compute_{a}" for a in archs)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        here=$(cd "${{0%/*}}" && pwd)
        case "$*" in
          *--version*) echo "Cuda compilation tools, release {version}, V{version}.1";;
          *--list-gpu-arch*) printf "{arch_lines}\\n";;
          *--dryrun*) echo "#\\$ _HERE_=$here"; echo "#\\$ TOP=$here/..";;
        esac
        """))
    nvcc.chmod(0o755)
    return root


def _wrapper(where: Path, target: Path) -> Path:
    """An ``nvcc`` on PATH that is a script exec'ing the real one (not a symlink)."""
    d = where / "wrapbin"
    d.mkdir()
    w = d / "nvcc"
    w.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
    w.chmod(0o755)
    return d


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST", B.STRICT_ENV):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_wrapper_nvcc_is_asked_for_its_root(tmp_path, clean_env):
    tk = _fake_toolkit(tmp_path / "opt")
    clean_env.setenv("PATH", str(_wrapper(tmp_path, tk / "bin" / "nvcc")))
    found, notes = B.find_cuda_toolkit("13.0")
    assert found is not None, notes
    assert Path(found.root) == tk.resolve()
    assert found.version == "13.0" and "wrapper" in found.how
    # torch's own guess, two folders above the nvcc on PATH, is not a toolkit
    assert not B._is_root(str(tmp_path))


def test_symlinked_nvcc_resolves(tmp_path, clean_env):
    tk = _fake_toolkit(tmp_path / "opt")
    links = tmp_path / "links"
    links.mkdir()
    (links / "nvcc").symlink_to(tk / "bin" / "nvcc")
    clean_env.setenv("PATH", str(links))
    found, _ = B.find_cuda_toolkit("13.0")
    assert found is not None and Path(found.root) == tk.resolve()
    assert "->" in found.how


def test_cuda_home_wins_when_valid_and_is_reported_when_not(tmp_path, clean_env):
    a = _fake_toolkit(tmp_path / "a")
    b = _fake_toolkit(tmp_path / "b", version="13.1")
    clean_env.setenv("PATH", str(_wrapper(tmp_path, a / "bin" / "nvcc")))
    clean_env.setenv("CUDA_HOME", str(b))
    found, _ = B.find_cuda_toolkit("13.0")
    assert Path(found.root) == b.resolve() and found.how == "$CUDA_HOME"
    clean_env.setenv("CUDA_HOME", str(tmp_path / "nowhere"))
    found, notes = B.find_cuda_toolkit("13.0")
    assert Path(found.root) == a.resolve()
    assert any("CUDA_HOME" in n for n in notes), notes


def test_default_arch_list_follows_nvcc(tmp_path, clean_env):
    new = B.Toolkit(str(_fake_toolkit(tmp_path / "n")), "", "13.0", "test")
    new.nvcc = os.path.join(new.root, "bin", "nvcc")
    assert B.default_arch_list(new) == "8.0;9.0;10.0;12.0+PTX"
    old = B.Toolkit(str(_fake_toolkit(tmp_path / "o", "12.4", archs=(70, 75, 80, 86, 90))),
                    "", "12.4", "test")
    old.nvcc = os.path.join(old.root, "bin", "nvcc")
    assert B.default_arch_list(old) == "8.0;9.0+PTX"


def test_plan_cuda_decisions(tmp_path, clean_env):
    tk = _fake_toolkit(tmp_path / "opt")
    clean_env.setenv("PATH", str(_wrapper(tmp_path, tk / "bin" / "nvcc")))
    assert not B.plan_cuda(None).use
    plan = B.plan_cuda("13.0")
    assert plan.use and plan.arch_list == "8.0;9.0;10.0;12.0+PTX" and plan.arch_source == "default"
    clean_env.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    plan = B.plan_cuda("13.0")
    assert plan.arch_list == "8.6" and plan.arch_source == "TORCH_CUDA_ARCH_LIST"
    mismatch = B.plan_cuda("12.8")
    assert not mismatch.use and "major" in mismatch.reason and "\n" not in mismatch.reason
    clean_env.setenv("PATH", str(tmp_path / "empty"))
    clean_env.setattr(B, "_usual_roots", lambda: [])
    none = B.plan_cuda("13.0")
    assert not none.use and "no CUDA toolkit was found" in none.reason


def test_runs_on():
    archs = {"sass": ["sm_80", "sm_90", "sm_100", "sm_120"], "ptx": ["compute_120"]}
    assert B.runs_on(archs, (8, 6))  # sm_80 cubin runs on sm_86
    assert B.runs_on(archs, (9, 0)) and B.runs_on(archs, (10, 0))
    assert B.runs_on(archs, (12, 1)) and B.runs_on(archs, (13, 0))  # 13.0: through PTX
    assert not B.runs_on(archs, (7, 5))  # T4: no code unless 7.5 is in the list
    assert not B.runs_on({"sass": ["sm_90"], "ptx": []}, (8, 0))
    assert not B.runs_on(None, (9, 0))


_SETUP_RUNNER = """
import json, runpy, sys, setuptools, torch
torch.version.cuda = sys.argv[1] or None      # pretend to be a CUDA torch
seen = {}
setuptools.setup = lambda **kw: seen.update(kw)
sys.argv = ["setup.py", "--version"]
runpy.run_path("setup.py", run_name="__main__")
ext = seen["ext_modules"]
import os
print(json.dumps({"n": len(ext), "sources": ext[0].sources if ext else [],
                  "macros": ext[0].define_macros if ext else [],
                  "archs": os.environ.get("TORCH_CUDA_ARCH_LIST"),
                  "cuda_home": os.environ.get("CUDA_HOME"),
                  "cmd": sorted(seen["cmdclass"])}))
"""


def _run_setup(torch_cuda: str, path: str, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items()
         if k not in ("CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST", B.STRICT_ENV)}
    e.update(PATH=f"{path}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin:/bin",
             **env)
    return subprocess.run([sys.executable, "-c", _SETUP_RUNNER, torch_cuda], cwd=ROOT,
                          capture_output=True, text=True, env=e, timeout=120)


def test_setup_declares_cuda_extension_without_cuda_home(tmp_path):
    import json

    tk = _fake_toolkit(tmp_path / "opt")
    res = _run_setup("13.0", str(_wrapper(tmp_path, tk / "bin" / "nvcc")))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n"] == 1 and any(s.endswith(".cu") for s in out["sources"]), out
    assert all(not os.path.isabs(s) for s in out["sources"])
    # the same globs: every csrc file of the layout is built
    want = {os.path.relpath(p, ROOT) for pat in ("csrc/*.cpp", "csrc/cpu/*.cpp",
            "csrc/cuda/*.cu", "csrc/cuda/*_cuda.cpp") for p in ROOT.glob(pat)}
    assert set(out["sources"]) == want
    assert ["MTT_FAST_WITH_CUDA", None] in out["macros"]
    assert out["archs"] == "8.0;9.0;10.0;12.0+PTX" and Path(out["cuda_home"]) == tk.resolve()
    assert {"build_ext", "build_py"} <= set(out["cmd"])


def test_setup_mismatched_toolkit_builds_cpu_ops_or_fails_when_strict(tmp_path):
    import json

    tk = _fake_toolkit(tmp_path / "opt", version="12.8")
    path = str(_wrapper(tmp_path, tk / "bin" / "nvcc"))
    res = _run_setup("13.0", path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n"] == 1 and not any(s.endswith(".cu") for s in out["sources"]), out
    warn = [ln for ln in res.stderr.splitlines() if "WARNING (mtt-fast)" in ln]
    assert len(warn) == 1 and "does not match" in warn[0], res.stderr
    strict = _run_setup("13.0", path, **{B.STRICT_ENV: "1"})
    assert strict.returncode != 0 and "does not match" in strict.stderr


def test_setup_without_torch_warns_or_fails_when_strict(tmp_path):
    runner = (
        "import runpy, sys, setuptools\n"
        "sys.modules['torch'] = None  # as in pip's isolated build environment\n"
        "seen = {}\n"
        "setuptools.setup = lambda **kw: seen.update(kw)\n"
        "sys.argv = ['setup.py', '--version']\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
        "assert seen['ext_modules'] == []\n"
        "assert 'build_py' in seen['cmdclass']  # the wheel still carries csrc/\n"
    )
    env = {k: v for k, v in os.environ.items() if k != B.STRICT_ENV}
    res = subprocess.run([sys.executable, "-c", runner], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "build-ops" in res.stderr
    env[B.STRICT_ENV] = "1"
    res = subprocess.run([sys.executable, "-c", runner], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode != 0 and "not importable" in res.stderr


def _real_nvcc() -> str | None:
    tk, _ = B.find_cuda_toolkit(None)
    return tk.nvcc if tk else None


@pytest.mark.skipif(_real_nvcc() is None, reason="no CUDA toolkit (nvcc) on this machine")
def test_fatbin_archs_reads_what_nvcc_built(tmp_path):
    """A shared library built by nvcc with one cubin and one PTX: the parser must name
    exactly those (and agree with cuobjdump where it is installed)."""
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k(float* x) { x[threadIdx.x] *= 2.f; }\n"
                   "void launch(float* x) { k<<<1, 32>>>(x); }\n")
    lib = tmp_path / "libk.so"
    res = subprocess.run(
        [_real_nvcc(), "-shared", "-Xcompiler", "-fPIC", "-o", str(lib), str(src),
         "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=compute_90"],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = B.fatbin_archs(lib)
    assert got == {"sass": ["sm_80"], "ptx": ["compute_90"]}, got
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:
        listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", str(lib)],
                                 capture_output=True, text=True).stdout
        assert "sm_80.cubin" in listing and "sm_90.ptx" in listing, listing
    assert B.fatbin_archs(sys.executable) is None  # no .nv_fatbin section


@pytest.mark.skipif(not os.environ.get("MTT_FAST_EXPECT_OPS"),
                    reason="MTT_FAST_EXPECT_OPS unset (set by .ci/cuda_build.sh)")
def test_suite_runs_against_the_expected_build():
    """Under .ci/cuda_build.sh: the suite imports the installed package, whose prebuilt ops
    have kernels for every device named in MTT_FAST_EXPECT_OPS (e.g. ``cpu,cuda``)."""
    import mtt_fast
    from mtt_fast import _ext

    assert "site-packages" in mtt_fast.__file__, mtt_fast.__file__
    assert _ext.load(auto_build=False), _ext.load_error()
    assert _ext.origin()["origin"] == "prebuilt", _ext.origin()
    want = set(os.environ["MTT_FAST_EXPECT_OPS"].split(","))
    ops = _ext.registered()
    assert len(ops) >= 8 and all(want <= set(v) for v in ops.values()), ops
