"""Build script for mtt-fast.

The compiled ops (``csrc/``) are built as the extension ``mtt_fast._C``:

* CPU kernels always (``csrc/*.cpp``, ``csrc/cpu/*.cpp``);
* CUDA kernels too (``csrc/cuda/*.cu``, ``csrc/cuda/*_cuda.cpp``) when torch is a CUDA build
  and a CUDA toolkit is found (``CUDA_HOME``); a visible GPU is not needed. Architectures:
  ``TORCH_CUDA_ARCH_LIST`` if set, else ``8.0;9.0`` (sm_80, sm_90).

``MTT_FAST_BUILD_EXT=0`` installs the pure-Python package. Without torch, or when the
compile fails, setup warns and installs the pure-Python package too: every op has a
PyTorch reference. Install torch first, then ``pip install --no-build-isolation .``;
develop with ``python setup.py build_ext --inplace``.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"


def _warn(msg: str) -> None:
    print(f"\nWARNING (mtt-fast): {msg}\n", file=sys.stderr)


def _sources(*patterns: str) -> list[str]:
    # relative paths: setuptools rejects absolute source paths in some versions
    out: list[str] = []
    for p in patterns:
        out += sorted(os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, p)))
    return out


def _extensions():
    """``(ext_modules, cmdclass)``; empty when the compiled part is skipped."""
    if os.environ.get("MTT_FAST_BUILD_EXT", "1") == "0":
        print("mtt-fast: MTT_FAST_BUILD_EXT=0, installing the pure-Python package")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # torch missing or broken: still installable
        _warn(f"torch is not importable ({exc}); installing without compiled ops")
        return [], {}

    sources = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
    cxx = ["-O3", "-fopenmp"]  # -fopenmp: at::parallel_for is header-inlined OpenMP
    macros: list[tuple[str, str | None]] = []
    use_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None
    if torch.version.cuda and cpp_extension.CUDA_HOME is None:
        _warn("torch is a CUDA build but no CUDA toolkit was found (CUDA_HOME); CPU ops only")
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
        sources += _sources("csrc/cuda/*.cu", "csrc/cuda/*_cuda.cpp")
        macros.append(("MTT_FAST_WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "mtt_fast._C",
            sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "mtt_fast._C",
            sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """Build the extension, or warn and fall back to the pure-Python package."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:
                _warn(
                    f"building the compiled ops failed ({type(exc).__name__}: {exc}); "
                    "mtt_fast will use its pure-PyTorch reference ops"
                )

        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as exc:
                _warn(
                    f"building {ext.name} failed ({type(exc).__name__}: {exc}); "
                    "mtt_fast will use its pure-PyTorch reference ops"
                )

    return [ext], {"build_ext": OptionalBuildExt}


ext_modules, cmdclass = _extensions()

setup(
    name="mtt-fast",
    version="0.1.0",
    description="Dataset distillation by Matching Training Trajectories, fast and memory-efficient",
    packages=find_packages(include=["mtt_fast", "mtt_fast.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "numpy", "scikit-learn", "pillow", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "scipy", "safetensors", "psutil"],
        "triton": ["triton"],
        "svhn": ["scipy"],
    },
    entry_points={"console_scripts": ["mtt-fast=mtt_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
