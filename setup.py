"""Build script for mtt-fast.

The compiled ops (``csrc/``) are built as the extension ``mtt_fast._C`` when torch is
importable at build time (``pip install --no-build-isolation .``):

* CPU kernels always (``csrc/*.cpp``, ``csrc/cpu/*.cpp``);
* CUDA kernels too (``csrc/cuda/*.cu``, ``csrc/cuda/*_cuda.cpp``) when torch is a CUDA build
  and a CUDA toolkit of the same CUDA major is found; a visible GPU is not needed. The
  toolkit is found without ``CUDA_HOME`` (nvcc asked for its root, wrappers resolved, the
  usual locations: ``mtt_fast/_build.py``). Architectures: ``TORCH_CUDA_ARCH_LIST`` if set,
  else sm_80 and sm_90, sm_100 and sm_120 where nvcc supports them, and PTX of the newest.

Fallbacks, each with a one-line warning: no toolkit, or one of another CUDA major -> CPU
ops; a CUDA compile failure -> CPU ops; no torch (pip's build isolation) or a failed CPU
compile -> no prebuilt ops, which ``mtt_fast`` then compiles on first use from the copy of
``csrc/`` every wheel carries (``mtt_fast/_csrc``; ``mtt-fast build-ops`` does it ahead).
``MTT_FAST_BUILD_STRICT=1`` turns every fallback into an error. ``MTT_FAST_BUILD_EXT=0``
skips the compiled part entirely.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _load_build_module():
    # by path: importing the package would import torch, which may be absent here
    spec = importlib.util.spec_from_file_location(
        "_mtt_fast_build", os.path.join(ROOT, "mtt_fast", "_build.py")
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


B = _load_build_module()


def _warn(msg: str) -> None:
    print(f"\nWARNING (mtt-fast): {msg}\n", file=sys.stderr)


def _fallback(msg: str) -> None:
    """A build fallback: a warning, or an error under MTT_FAST_BUILD_STRICT=1."""
    if B.strict():
        raise RuntimeError(f"mtt-fast ({B.STRICT_ENV}=1): {msg}")
    _warn(msg)


class BuildPyWithSources(build_py):
    """build_py that also puts a copy of csrc/ in the package (``mtt_fast/_csrc``), so an
    installed wheel can compile its ops on first use."""

    def run(self) -> None:
        super().run()
        if not os.path.isdir(CSRC):
            return
        dst = os.path.join(self.build_lib, "mtt_fast", "_csrc")
        shutil.rmtree(dst, ignore_errors=True)
        for dirpath, _, files in os.walk(CSRC):
            for f in files:
                if f.endswith(B.SOURCE_SUFFIXES):
                    src = os.path.join(dirpath, f)
                    out = os.path.join(dst, os.path.relpath(src, CSRC))
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    shutil.copyfile(src, out)


def _extensions():
    """``(ext_modules, cmdclass)``; no extension when the compiled part is skipped."""
    cmdclass: dict = {"build_py": BuildPyWithSources}
    if os.environ.get("MTT_FAST_BUILD_EXT", "1") == "0":
        print("mtt-fast: MTT_FAST_BUILD_EXT=0, installing the pure-Python package", file=sys.stderr)
        return [], cmdclass
    try:
        import torch
    except Exception as exc:  # torch missing (pip's build isolation) or broken
        _fallback(
            f"torch is not importable at build time ({type(exc).__name__}: {exc}); no "
            "prebuilt ops: they compile on first use (or run `mtt-fast build-ops`). To "
            "build them now: install torch, then `pip install --no-build-isolation .`"
        )
        return [], cmdclass

    plan = B.plan_cuda(torch.version.cuda)
    if plan.use:  # before cpp_extension guesses CUDA_HOME from the nvcc on PATH
        os.environ["CUDA_HOME"] = plan.toolkit.root
    from torch.utils import cpp_extension

    cpu_sources = B.sources(CSRC, cuda=False, relative_to=ROOT)
    if plan.use:
        cpp_extension.CUDA_HOME = plan.toolkit.root  # in case it was imported earlier
        os.environ["TORCH_CUDA_ARCH_LIST"] = plan.arch_list
        try:
            cpp_extension._get_cuda_arch_flags()  # torch knows these archs?
        except (ValueError, IndexError) as exc:
            _fallback(f"TORCH_CUDA_ARCH_LIST={plan.arch_list!r}: {exc}; CPU ops only")
            plan = B.CudaPlan(False, reason=str(exc))
    if plan.use:
        print(
            f"mtt-fast: CUDA kernels for {plan.arch_list} ({plan.arch_source}) with nvcc "
            f"{plan.toolkit.version} at {plan.toolkit.root} ({plan.toolkit.how})",
            file=sys.stderr,
        )
        shim = B.cudart_link_dir(plan.toolkit, os.path.join(ROOT, "build", "cudart-link"))
        ext = cpp_extension.CUDAExtension(
            "mtt_fast._C",
            B.sources(CSRC, cuda=True, relative_to=ROOT),
            library_dirs=[shim] if shim else [],
            define_macros=[(B.CUDA_MACRO, None)],
            extra_compile_args={"cxx": list(B.CXX_FLAGS), "nvcc": list(B.NVCC_FLAGS)},
            extra_link_args=list(B.LD_FLAGS),
        )
    else:
        if torch.version.cuda:  # a CUDA torch that gets CPU ops only: say why
            _fallback(plan.reason)
        else:
            print(f"mtt-fast: {plan.reason}", file=sys.stderr)
        ext = None

    def cpu_extension():
        return cpp_extension.CppExtension(
            "mtt_fast._C",
            cpu_sources,
            extra_compile_args={"cxx": list(B.CXX_FLAGS)},
            extra_link_args=list(B.LD_FLAGS),
        )

    ext = ext or cpu_extension()
    build_info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": None,
        "fallback": None if plan.use or not torch.version.cuda else plan.reason,
        "how": "setup.py",
    }
    if plan.use:
        build_info["cuda"] = {
            "nvcc": plan.toolkit.version,
            "root": plan.toolkit.root,
            "found_by": plan.toolkit.how,
            "arch_list": plan.arch_list,
            "arch_source": plan.arch_source,
        }

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """Build the extension; a CUDA failure falls back to the CPU ops, a CPU failure to
        compile-on-first-use (errors instead under MTT_FAST_BUILD_STRICT=1)."""

        def _to_cpu(self, ext, exc: BaseException) -> None:
            _fallback(
                f"building the CUDA kernels failed ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); "
                "building the CPU ops only"
            )
            cpu = cpu_extension()
            for attr in ("sources", "define_macros", "include_dirs", "library_dirs",
                         "libraries", "runtime_library_dirs", "extra_link_args"):
                setattr(ext, attr, getattr(cpu, attr))
            args = ext.extra_compile_args
            ext.extra_compile_args = {"cxx": args["cxx"], "nvcc": []} if isinstance(
                args, dict) else args
            build_info["fallback"] = f"CUDA compile failed: {type(exc).__name__}"
            build_info["cuda"] = None

        def build_extensions(self) -> None:
            try:
                super().build_extensions()
            except Exception as exc:  # before compiling (e.g. torch's CUDA version check)
                cuda = any(s.endswith(".cu") for e in self.extensions for s in e.sources)
                if B.strict() or not cuda:
                    raise
                for e in self.extensions:
                    self._to_cpu(e, exc)
                super().build_extensions()

        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as exc:
                if not any(s.endswith(".cu") for s in ext.sources):
                    raise
                self._to_cpu(ext, exc)  # raises under MTT_FAST_BUILD_STRICT=1
                super().build_extension(ext)
            out = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_C.build.json")
            with open(out, "w") as f:
                json.dump(build_info, f, indent=1)

        def copy_extensions_to_source(self) -> None:  # --inplace and editable installs
            super().copy_extensions_to_source()
            build_py = self.get_finalized_command("build_py")
            for ext in self.extensions:
                inplace, regular = self._get_inplace_equivalent(build_py, ext)
                src = os.path.join(os.path.dirname(regular), "_C.build.json")
                if os.path.exists(src):
                    shutil.copyfile(src, os.path.join(os.path.dirname(inplace), "_C.build.json"))

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:
                if B.strict():
                    raise
                _warn(
                    f"building the compiled ops failed ({type(exc).__name__}: {exc}); no "
                    "prebuilt ops: they compile on first use (or run `mtt-fast build-ops`)"
                )

    cmdclass["build_ext"] = OptionalBuildExt
    return [ext], cmdclass


ext_modules, cmdclass = _extensions()

setup(
    name="mtt-fast",
    version="0.1.0",
    description="Dataset distillation by Matching Training Trajectories, fast and memory-efficient",
    packages=find_packages(include=["mtt_fast", "mtt_fast.*"]),
    python_requires=">=3.10",
    # ninja: compiles the ops on first use when no prebuilt ones came with the install
    install_requires=["torch>=2.1", "numpy", "scikit-learn", "pillow", "tqdm", "ninja"],
    extras_require={
        # triton too: its kernels are tested on the CPU under TRITON_INTERPRET=1
        "test": ["pytest", "pytest-benchmark", "scipy", "safetensors", "psutil", "build", "triton"],
        "triton": ["triton"],
        "svhn": ["scipy"],
    },
    entry_points={"console_scripts": ["mtt-fast=mtt_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
