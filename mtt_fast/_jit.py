"""The compiled ops built on first use, into a per-user cache.

An install that brought no prebuilt ``mtt_fast._C`` (``pip install mtt-fast`` builds its
wheel in an isolated environment without torch), or one whose ``_C`` no longer loads (torch
was upgraded), compiles the same ``csrc/`` sources with ninja through torch's
``cpp_extension.load``, with the flags, CUDA toolkit discovery and architectures of
``setup.py`` (:mod:`mtt_fast._build`). Every wheel carries the sources as
``mtt_fast/_csrc``; a source checkout uses ``csrc/``.

Where: ``$MTT_FAST_CACHE`` or ``$XDG_CACHE_HOME/mtt_fast`` or ``~/.cache/mtt_fast``, then
``ops/py<XY>-torch<version>-<hash of the sources>/``: a new torch or edited sources get a
build of their own. A finished build holds ``build.json`` (what was built, for which
device and architectures) beside the library.

When (``MTT_FAST_JIT``):

* ``background`` (default): the first use of an op in a process with no compiled ops
  starts one build in a detached process (one per machine and cache key, even under
  ``torchrun``) and says so; this process keeps the Triton and reference backends, so a
  run never changes backend half-way; the next process loads the build.
* ``sync``: the first use builds in the foreground, then loads it.
* ``0``: never build on first use.

``mtt-fast build-ops`` (or ``python -m mtt_fast._jit``) builds in the foreground; add
``--strict`` to make a CUDA fallback an error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from mtt_fast import _build as B

LIB_NAME = "mtt_fast_ops"
_PKG = Path(__file__).resolve().parent


def csrc_dir() -> Path | None:
    """The sources to compile: the wheel's copy, else a source checkout's ``csrc/``."""
    for d in (_PKG / "_csrc", _PKG.parent / "csrc"):
        if (d / "ops.cpp").is_file():
            return d
    return None


def cache_root() -> Path:
    env = os.environ.get("MTT_FAST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "mtt_fast"


def key_dir(csrc: Path | None = None) -> Path | None:
    """The cache folder of this Python, torch and set of sources (``None``: no sources)."""
    csrc = csrc or csrc_dir()
    if csrc is None:
        return None
    tag = torch.__version__.replace("+", "-")
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return cache_root() / "ops" / f"{py}-torch{tag}-{B.source_hash(csrc)[:16]}"


def cached() -> tuple[Path, dict] | None:
    """``(library, build info)`` of a finished build for this torch and these sources."""
    d = key_dir()
    if d is None or not (d / "build.json").is_file():
        return None
    try:
        info = json.loads((d / "build.json").read_text())
        lib = d / info["library"]
    except (OSError, ValueError, KeyError):
        return None
    return (lib, info) if lib.is_file() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _builder(d: Path) -> int | None:
    """pid of a build running for ``d`` (``None`` when none); clears a stale claim."""
    f = d / "builder.pid"
    try:
        txt = f.read_text().strip()
        age = time.time() - f.stat().st_mtime
    except OSError:
        return None
    if txt.isdigit() and _alive(int(txt)):
        return int(txt)
    if not txt and age < 60:  # claimed, the builder not started yet
        return -1
    try:  # its builder died: torch's own lock too, or the next build waits forever
        f.unlink()
        (d / "lock").unlink(missing_ok=True)
    except OSError:
        pass
    return None


def _claim(d: Path) -> bool:
    try:
        os.close(os.open(d / "builder.pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _child_env() -> dict:
    env = dict(os.environ, MTT_FAST_JIT="0", MTT_FAST_NO_EXT="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PKG.parent), env.get("PYTHONPATH")) if p)
    return env


def _what(plan: B.CudaPlan) -> str:
    return f"CPU + CUDA {plan.arch_list}" if plan.use else "CPU"


def first_use(mode: str) -> str:
    """Called when no compiled ops could be loaded: start the build ``mode`` asks for
    (``background`` | ``sync``) and return one line for the user."""
    d = key_dir()
    if d is None:
        return "no csrc/ sources in this install to compile the ops from"
    d.mkdir(parents=True, exist_ok=True)
    log = d / "build.log"
    if (d / "failed.json").is_file():
        return (f"compiling the ops failed before (log: {log}); `mtt-fast build-ops` retries "
                "and shows why")
    pid = _builder(d)
    if pid is not None:
        return (f"the ops are being compiled by process {pid if pid > 0 else '(starting)'} "
                f"(log: {log}); until then the Triton and reference backends run")
    if not _claim(d):
        return f"the ops are being compiled by another process (log: {log})"
    plan = B.plan_cuda(torch.version.cuda)
    cmd = [sys.executable, "-m", "mtt_fast._jit", "--pidfile", str(d / "builder.pid")]
    if mode == "sync":
        sys.stderr.write(f"mtt-fast: compiling the ops ({_what(plan)}) for torch "
                         f"{torch.__version__} into {d} (first use; a few minutes)...\n")
        with open(log, "w") as f:
            res = subprocess.run(cmd, env=_child_env(), stdout=f, stderr=subprocess.STDOUT)
        return "" if res.returncode == 0 else f"compiling the ops failed (log: {log})"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=_child_env(), stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (d / "builder.pid").write_text(str(proc.pid))
    return (f"compiling the ops ({_what(plan)}) for torch {torch.__version__} in the background "
            f"(process {proc.pid}, a few minutes, log: {log}); this process uses the Triton "
            "and reference backends, later ones the compiled ops. `mtt-fast build-ops` "
            "compiles them in the foreground")


def _registered() -> dict[str, list[str]]:
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("mtt_fast::"))
    return {
        op.split("::")[1]: [
            d for d, k in (("cpu", "CPU"), ("cuda", "CUDA"))
            if torch._C._dispatch_has_kernel_for_dispatch_key(op, k)
        ]
        for op in ops
    }


def build(strict: bool = False, verbose: bool = True) -> dict:
    """Compile and load the ops in this process (a fresh one: the namespace must not be
    registered yet) and write ``build.json``. A CUDA failure falls back to the CPU ops
    unless ``strict``.

    Returns:
        The build info written to ``build.json``.
    """
    csrc = csrc_dir()
    if csrc is None:
        raise RuntimeError("no csrc/ sources in this install to compile the ops from")
    d = key_dir(csrc)
    d.mkdir(parents=True, exist_ok=True)
    for stale in ("build.json", "failed.json"):
        (d / stale).unlink(missing_ok=True)
    plan = B.plan_cuda(torch.version.cuda)
    if plan.use:  # before cpp_extension guesses CUDA_HOME from the nvcc on PATH
        os.environ["CUDA_HOME"] = plan.toolkit.root
    from torch.utils import cpp_extension

    fallback = None
    if torch.version.cuda and not plan.use:
        fallback = plan.reason
        if strict:
            raise RuntimeError(f"mtt-fast (strict): {plan.reason}")
        print(f"mtt-fast: WARNING: {plan.reason}", file=sys.stderr, flush=True)

    def compile_(cuda: bool) -> str:
        macro = [f"-D{B.CUDA_MACRO}"] if cuda else []
        shim = B.cudart_link_dir(plan.toolkit, d / "cudart-link") if cuda else None
        return cpp_extension.load(
            LIB_NAME,
            B.sources(csrc, cuda=cuda),
            extra_cflags=B.CXX_FLAGS + macro,
            extra_cuda_cflags=B.NVCC_FLAGS + macro,
            extra_ldflags=B.LD_FLAGS + ([f"-L{shim}"] if shim else []),
            extra_include_paths=[str(csrc)],
            build_directory=str(d),
            verbose=verbose,
            with_cuda=cuda,
            is_python_module=False,
        )

    t0 = time.time()
    lib = None
    if plan.use:
        os.environ["CUDA_HOME"] = plan.toolkit.root
        cpp_extension.CUDA_HOME = plan.toolkit.root
        os.environ["TORCH_CUDA_ARCH_LIST"] = plan.arch_list
        if verbose:
            print(f"mtt-fast: CUDA kernels for {plan.arch_list} ({plan.arch_source}) with nvcc "
                  f"{plan.toolkit.version} at {plan.toolkit.root} ({plan.toolkit.how})",
                  flush=True)
        try:
            lib = compile_(True)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            fallback = f"CUDA compile failed ({type(exc).__name__}: {msg})"
            if strict:
                raise RuntimeError(f"mtt-fast (strict): {fallback}") from exc
            print(f"mtt-fast: WARNING: {fallback}; building the CPU ops only", file=sys.stderr,
                  flush=True)
    if lib is None:
        lib = compile_(False)
    info = {
        "library": os.path.basename(lib),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": None,
        "fallback": fallback,
        "how": "jit",
        "seconds": round(time.time() - t0, 1),
        "kernels": _registered(),
    }
    if plan.use and fallback is None:
        info["cuda"] = {
            "nvcc": plan.toolkit.version,
            "root": plan.toolkit.root,
            "found_by": plan.toolkit.how,
            "arch_list": plan.arch_list,
            "arch_source": plan.arch_source,
            "fatbin": B.fatbin_archs(lib),
        }
    tmp = d / "build.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(d / "build.json")  # last: its presence means a finished build
    return info


def build_ops(strict: bool = False, quiet: bool = False) -> int:
    """``mtt-fast build-ops``: compile the ops into the cache in a fresh process, in the
    foreground, and say what was built. Returns the exit status (0 built, 1 failed)."""
    cmd = [sys.executable, "-m", "mtt_fast._jit"] + ["--strict"] * strict + ["--quiet"] * quiet
    d = key_dir()
    if d is None:
        print("mtt-fast: error: no csrc/ sources in this install to compile the ops from",
              file=sys.stderr)
        return 1
    d.mkdir(parents=True, exist_ok=True)
    (d / "failed.json").unlink(missing_ok=True)
    plan = B.plan_cuda(torch.version.cuda)
    print(f"mtt-fast: compiling the ops ({_what(plan)}) for torch {torch.__version__} into {d}",
          flush=True)
    res = subprocess.run(cmd, env=_child_env(), stdout=subprocess.PIPE, text=True)
    lines = (res.stdout or "").strip().splitlines()
    if res.returncode != 0 or not lines:
        return 1
    if not quiet:
        print("\n".join(lines[:-1]))
    info = json.loads(lines[-1])
    print(f"mtt-fast: built in {info['seconds']} s: {summary(info)}")
    print("new processes load them (`mtt-fast info` shows what they have)")
    return 0


def summary(info: dict | None) -> str:
    """One line: the devices and GPU architectures a build (its build.json) is for."""
    if not info:
        return "no build record"
    out = f"CPU kernels; torch {info.get('torch')}"
    cuda = info.get("cuda")
    if cuda:
        out = f"CPU + CUDA kernels ({cuda.get('arch_list')}, nvcc {cuda.get('nvcc')}); " \
              f"torch {info.get('torch')}"
    return out


def describe() -> tuple[list[str], str | None]:
    """What ``mtt-fast info`` says about the compiled ops: ``(lines, the one command that
    gets what is missing or None)``. Never builds anything."""
    from mtt_fast import _ext

    lines: list[str] = []
    fix = None
    ok = _ext.load(auto_build=False)
    where = _ext.origin()
    if not ok:
        lines.append(f"compiled ops: none loaded: {_ext.load_error()}")
        d = key_dir()
        if d is not None and _builder(d) is not None:
            lines.append(f"  being compiled now (log: {d / 'build.log'})")
        fix = "mtt-fast build-ops"
        return lines, fix
    how = {"cache": "compiled into the per-user cache by build-ops or on first use",
           "prebuilt": "built by setup.py"}[str(where["origin"])]
    lines.append(f"compiled ops: {where['path']} ({how})")
    kernels = _ext.registered()
    archs = _ext.cuda_archs()
    lines.append(f"  cpu : {sum('cpu' in v for v in kernels.values())}/{len(kernels)} ops, "
                 f"{platform_machine()}")
    if any("cuda" in v for v in kernels.values()):
        code = ", ".join(archs["sass"]) + " cubins" if archs else "architectures unknown"
        if archs and archs["ptx"]:
            code += " + PTX " + ", ".join(archs["ptx"]) + " (the driver compiles it for newer GPUs)"
        lines.append(f"  cuda: {sum('cuda' in v for v in kernels.values())}/{len(kernels)} "
                     f"ops, {code}")
    else:
        lines.append("  cuda: none")
    w = max([len(op) for op in kernels] + [22]) + 2
    lines.append(f"  {'op':<{w}s}cpu  cuda")
    for op, v in kernels.items():
        lines.append(f"  {op:<{w}s}{'yes' if 'cpu' in v else 'no':<5s}{'yes' if 'cuda' in v else 'no'}")
    build = where.get("build") or {}
    if build:
        lines.append(f"  built for: {summary(build)}")
    if build.get("fallback"):
        lines.append(f"  CUDA was left out at build time: {build['fallback']}")
    # what is missing, and the one command that gets it
    has_cuda = any("cuda" in v for v in kernels.values())
    if torch.version.cuda and not has_cuda:
        plan = B.plan_cuda(torch.version.cuda)
        if plan.use:
            lines.append(f"missing: CUDA kernels; nvcc {plan.toolkit.version} at "
                         f"{plan.toolkit.root} can build them")
            fix = "mtt-fast build-ops"
        else:
            lines.append(f"missing: CUDA kernels: {plan.reason}")
            cu = ".".join(torch.version.cuda.split(".")[:2])
            fix = (f'pip install "nvidia-cuda-nvcc=={cu}.*" "nvidia-cuda-cccl=={cu}.*" '
                   "&& mtt-fast build-ops")

    elif not torch.version.cuda:
        lines.append(f"  (torch {torch.__version__} is a CPU build: CUDA kernels need a CUDA "
                     "torch, then `mtt-fast build-ops`)")
    if has_cuda and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            name = f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})"
            if archs is None or B.runs_on(archs, cap):
                lines.append(f"  {name}: runs the CUDA kernels")
            else:
                lines.append(f"missing: code for {name}: its CUDA tensors use Triton")
                fix = (f'TORCH_CUDA_ARCH_LIST="{cap[0]}.{cap[1]}+PTX" mtt-fast build-ops')
    return lines, fix


def platform_machine() -> str:
    import platform

    return f"{platform.machine()} ({' '.join(B.CXX_FLAGS)})"


def main(argv: list[str] | None = None) -> int:
    """``python -m mtt_fast._jit [--strict] [--quiet]``: compile the ops into the cache."""
    ap = argparse.ArgumentParser(prog="python -m mtt_fast._jit", description=__doc__.split("\n")[0])
    ap.add_argument("--strict", action="store_true", help="a CUDA fallback is an error")
    ap.add_argument("--quiet", action="store_true", help="no compiler command lines")
    ap.add_argument("--pidfile", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    d = key_dir()
    if a.pidfile:
        Path(a.pidfile).write_text(str(os.getpid()))
    try:
        info = build(strict=a.strict or B.strict(), verbose=not a.quiet)
    except Exception as exc:
        line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if d is not None and d.is_dir():
            (d / "failed.json").write_text(json.dumps({"error": line}))
        print(f"mtt-fast: error: compiling the ops failed: {line}", file=sys.stderr)
        return 1
    finally:
        if a.pidfile:
            Path(a.pidfile).unlink(missing_ok=True)
    print(json.dumps({"dir": str(d), **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
