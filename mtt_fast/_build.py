"""How the compiled ops are built: sources, flags, the CUDA toolkit and its architectures.

Shared by ``setup.py`` (the prebuilt extension ``mtt_fast._C``) and :mod:`mtt_fast._jit`
(the same sources compiled on first use into a per-user cache), so both build the same
thing. Standard library only: ``setup.py`` loads this file by path, before torch may be
importable.

Also reads which GPU code a built library carries (:func:`fatbin_archs`), from the
``.nv_fatbin`` ELF section, for ``mtt-fast info`` and the build checks.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Source globs, relative to the csrc folder. New ops that follow the layout
# (cpu/<op>_cpu.cpp, cuda/<op>_kernels.cu, cuda/<op>_cuda.cpp) are picked up as they come.
CPU_PATTERNS = ("*.cpp", "cpu/*.cpp")
CUDA_PATTERNS = ("cuda/*.cu", "cuda/*_cuda.cpp")
SOURCE_SUFFIXES = (".cpp", ".cc", ".cu", ".cuh", ".h", ".hpp")

CXX_FLAGS = ["-O3", "-fopenmp"]  # -fopenmp: at::parallel_for is header-inlined OpenMP
NVCC_FLAGS = ["-O3", "-lineinfo"]
LD_FLAGS = ["-fopenmp"]
CUDA_MACRO = "MTT_FAST_WITH_CUDA"

# Always built (when nvcc supports them); sm_100 / sm_120 join when nvcc knows them; the
# newest also goes in as PTX, which the driver compiles for any newer GPU.
BASE_ARCHS = ("8.0", "9.0")
EXTRA_ARCHS = ("10.0", "12.0")
FALLBACK_ARCHS = "8.0;9.0+PTX"  # an nvcc too old to list its architectures

STRICT_ENV = "MTT_FAST_BUILD_STRICT"


def strict() -> bool:
    """Whether ``MTT_FAST_BUILD_STRICT`` asks for any build fallback to be an error."""
    return os.environ.get(STRICT_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def sources(csrc: str | os.PathLike, cuda: bool, relative_to: str | None = None) -> list[str]:
    """The sources to compile: CPU ops always, CUDA ones when ``cuda``.

    Args:
        csrc: the csrc folder.
        cuda: add ``cuda/*.cu`` and ``cuda/*_cuda.cpp``.
        relative_to: return paths relative to this folder (setuptools wants relative ones).
    """
    pats = CPU_PATTERNS + (CUDA_PATTERNS if cuda else ())
    out: list[str] = []
    for p in pats:
        for f in sorted(glob.glob(os.path.join(os.fspath(csrc), p))):
            out.append(os.path.relpath(f, relative_to) if relative_to else os.path.abspath(f))
    return out


def source_hash(csrc: str | os.PathLike) -> str:
    """sha256 over every source and header under ``csrc`` (names and contents)."""
    h = hashlib.sha256()
    root = Path(csrc)
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix in SOURCE_SUFFIXES:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


# ------------------------------------------------------------------------ CUDA toolkit


@dataclass
class Toolkit:
    """A CUDA toolkit: its root (what torch calls ``CUDA_HOME``), nvcc and version."""

    root: str
    nvcc: str
    version: str  # "13.0"
    how: str  # how it was found, for messages

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _run(cmd: list[str], timeout: float = 60) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (res.stdout or "") + (res.stderr or "")


def _is_root(root: str | None) -> bool:
    if not root:
        return False
    return os.access(os.path.join(root, "bin", "nvcc"), os.X_OK) and os.path.isfile(
        os.path.join(root, "include", "cuda_runtime.h")
    )


def nvcc_version(nvcc: str) -> str | None:
    """``"13.0"`` from ``nvcc --version``, or ``None``."""
    m = re.search(r"release (\d+)\.(\d+)", _run([nvcc, "--version"]))
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _root_from_nvcc(nvcc: str) -> tuple[str | None, str]:
    """The toolkit behind an ``nvcc`` that may be a symlink or a wrapper script."""
    real = os.path.realpath(nvcc)
    root = os.path.dirname(os.path.dirname(real))
    if _is_root(root):
        how = "nvcc on PATH" if real == os.path.abspath(nvcc) else f"nvcc on PATH -> {real}"
        return root, how
    # A wrapper script: nvcc itself names its root in a dry run ("#$ TOP=<bin>/..").
    out = _run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull])
    for key in ("TOP", "_HERE_"):
        m = re.search(rf"^#\$ {key}=(.+)$", out, re.M)
        if m:
            cand = os.path.normpath(m.group(1).strip())
            if key == "_HERE_":
                cand = os.path.dirname(cand)
            if _is_root(cand):
                return cand, f"asked {nvcc} (a wrapper) for its root"
    return None, ""


def _usual_roots() -> list[str]:
    def ver(p: str) -> tuple[int, ...]:
        m = re.search(r"cuda-(\d+)\.(\d+)$", p)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    versioned = sorted(glob.glob("/usr/local/cuda-*"), key=ver, reverse=True)
    # pip's CUDA 13+ toolkit (nvidia-cuda-nvcc & co.) lays out site-packages/nvidia/cuNN
    wheels = sorted({os.path.realpath(p) for d in sys.path if d
                     for p in glob.glob(os.path.join(d, "nvidia", "cu[0-9]*"))}, reverse=True)
    return ["/usr/local/cuda", *versioned, "/opt/cuda", "/usr/lib/cuda", "/usr", *wheels]


def find_cuda_toolkit(torch_cuda: str | None = None) -> tuple[Toolkit | None, list[str]]:
    """Find a CUDA toolkit without help from the user.

    Order: ``CUDA_HOME`` / ``CUDA_PATH`` when they hold a toolkit; the ``nvcc`` on ``PATH``
    (symlinks resolved; a wrapper script is asked for its root with ``--dryrun``); then
    ``/usr/local/cuda``, ``/usr/local/cuda-X.Y`` (newest first), ``/opt/cuda``,
    ``/usr/lib/cuda``, ``/usr``, pip's toolkit (``site-packages/nvidia/cuNN`` from
    ``nvidia-cuda-nvcc``), those of torch's CUDA major first.

    Args:
        torch_cuda: torch's CUDA version (``torch.version.cuda``), to prefer a matching
            toolkit among the usual locations.

    Returns:
        ``(toolkit or None, notes)``: notes say what was looked at and rejected.
    """
    notes: list[str] = []
    found: list[tuple[str, str]] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        val = os.environ.get(var)
        if val:
            if _is_root(val):
                found.append((val, f"${var}"))
                break
            notes.append(f"${var}={val} holds no bin/nvcc + include/cuda_runtime.h")
    if not found:
        nvcc = shutil.which("nvcc")
        if nvcc:
            root, how = _root_from_nvcc(nvcc)
            if root:
                found.append((root, how))
            else:
                notes.append(f"{nvcc} on PATH: could not tell its toolkit root")
    if not found:
        roots = [r for r in _usual_roots() if _is_root(r)]
        if torch_cuda:
            major = torch_cuda.split(".")[0]
            same = [r for r in roots if (nvcc_version(os.path.join(r, "bin", "nvcc")) or "")
                    .split(".")[0] == major]
            roots = same + [r for r in roots if r not in same]
        found += [(r, "usual location") for r in roots[:1]]
        if not roots:
            notes.append("none in /usr/local/cuda*, /opt/cuda, /usr/lib/cuda, /usr, "
                         "site-packages/nvidia/cu*")
    for root, how in found:
        nvcc = os.path.join(root, "bin", "nvcc")
        version = nvcc_version(nvcc)
        if version is None:
            notes.append(f"{nvcc} --version gave no release number")
            continue
        return Toolkit(os.path.abspath(root), nvcc, version, how), notes
    return None, notes


def nvcc_archs(tk: Toolkit) -> set[str]:
    """Compute capabilities nvcc can target, as ``{"8.0", "9.0", ...}`` (empty if unknown)."""
    out = _run([tk.nvcc, "--list-gpu-arch"])
    return {f"{m[:-1]}.{m[-1]}" for m in re.findall(r"compute_(\d+)", out)}


def _num(a: str) -> float:
    return float(a.split("+")[0].rstrip("a"))


def default_arch_list(tk: Toolkit) -> str:
    """``TORCH_CUDA_ARCH_LIST`` to build when the user set none, e.g.
    ``"8.0;9.0;10.0;12.0+PTX"``: sm_80 and sm_90, sm_100 and sm_120 where nvcc supports
    them, and PTX of the newest."""
    known = nvcc_archs(tk)
    if not known:
        return FALLBACK_ARCHS
    archs = [a for a in BASE_ARCHS + EXTRA_ARCHS if a in known]
    if not archs:  # an nvcc too new for sm_80 .. sm_120: its newest, as PTX too
        archs = [max(known, key=_num)]
    archs.sort(key=_num)
    archs[-1] += "+PTX"
    return ";".join(archs)


@dataclass
class CudaPlan:
    """Whether to build the CUDA kernels, with what, and why not."""

    use: bool
    toolkit: Toolkit | None = None
    arch_list: str | None = None  # TORCH_CUDA_ARCH_LIST to build with
    arch_source: str = ""  # "TORCH_CUDA_ARCH_LIST" | "default"
    reason: str = ""  # one line when not used
    notes: list[str] = field(default_factory=list)


def plan_cuda(torch_cuda: str | None) -> CudaPlan:
    """Decide on the CUDA part of a build for a torch of CUDA version ``torch_cuda``.

    CUDA is built when torch is a CUDA build and a toolkit of the same CUDA major is found;
    a visible GPU is not needed.
    """
    if not torch_cuda:
        return CudaPlan(False, reason="torch is a CPU build: CPU ops only")
    tk, notes = find_cuda_toolkit(torch_cuda)
    if tk is None:
        return CudaPlan(
            False,
            reason=(
                f"torch is a CUDA {torch_cuda} build but no CUDA toolkit was found "
                f"({'; '.join(notes) or 'nothing found'}); CPU ops only. Install CUDA "
                f"{torch_cuda.split('.')[0]}.x's nvcc or set CUDA_HOME to its root"
            ),
            notes=notes,
        )
    if tk.major != int(torch_cuda.split(".")[0]):
        return CudaPlan(
            False,
            toolkit=tk,
            reason=(
                f"nvcc {tk.version} at {tk.root} does not match torch's CUDA {torch_cuda} "
                f"(major versions differ); CPU ops only"
            ),
            notes=notes,
        )
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return CudaPlan(True, tk, env, "TORCH_CUDA_ARCH_LIST", notes=notes)
    return CudaPlan(True, tk, default_arch_list(tk), "default", notes=notes)


def cudart_link_dir(tk: Toolkit, where: str | os.PathLike) -> str | None:
    """A folder to add to the linker's search path when the toolkit has no unversioned
    ``libcudart.so`` (pip's ``nvidia-cuda-runtime`` ships ``libcudart.so.NN`` only) while
    torch links ``-lcudart``; ``None`` when none is needed. At run time the loader finds
    the versioned library, which torch has loaded already."""
    if any(os.path.exists(os.path.join(tk.root, d, "libcudart.so")) for d in ("lib64", "lib")):
        return None
    found = sorted(glob.glob(os.path.join(tk.root, "lib*", "libcudart.so.[0-9]*")))
    if not found:
        return None
    os.makedirs(where, exist_ok=True)
    link = os.path.join(where, "libcudart.so")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(found[0], link)
    return os.fspath(where)


# ------------------------------------------------------------------------ fatbinaries

_FATBIN_MAGIC = 0xBA55ED50
_KIND = {1: "ptx", 2: "sass"}


def _elf_section(data: bytes, name: str) -> bytes | None:
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only
        return None
    end = "<" if data[5] == 1 else ">"
    shoff, = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)

    def sh(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        nm, = struct.unpack_from(end + "I", data, base)
        off, size = struct.unpack_from(end + "QQ", data, base + 0x18)
        return nm, off, size

    _, str_off, _ = sh(shstrndx)
    for i in range(shnum):
        nm, off, size = sh(i)
        j = data.index(b"\0", str_off + nm)
        if data[str_off + nm : j].decode(errors="replace") == name:
            return data[off : off + size]
    return None


def fatbin_archs(path: str | os.PathLike) -> dict[str, list[str]] | None:
    """The GPU code a shared library carries: ``{"sass": ["sm_80", ...], "ptx":
    ["compute_120"]}``, from its ``.nv_fatbin`` section; ``None`` when it has none (a
    CPU-only build) or the file cannot be read.

    Layout read here: a fatbinary is a 16-byte header (magic ``0xBA55ED50``, version,
    header size, payload size) followed by entries, each a header (kind 1 = PTX, 2 = ELF;
    its own size; payload size; the SM number at byte 28) and its payload; several
    fatbinaries (one per ``.cu`` file) lie back to back, 8-byte aligned.
    """
    try:
        data = Path(path).read_bytes()
        sec = _elf_section(data, ".nv_fatbin")
    except (OSError, struct.error, ValueError):
        return None
    if not sec:
        return None
    found: dict[str, set[int]] = {"sass": set(), "ptx": set()}
    pos = 0
    try:
        while pos + 16 <= len(sec):
            magic, _ver, hsize, size = struct.unpack_from("<IHHQ", sec, pos)
            if magic != _FATBIN_MAGIC:
                pos += 8  # padding between fatbinaries
                continue
            e, stop = pos + hsize, pos + hsize + size
            while e + 32 <= stop:
                kind, _u, ehsize, esize = struct.unpack_from("<HHIQ", sec, e)
                arch, = struct.unpack_from("<I", sec, e + 28)
                if kind in _KIND and arch:
                    found[_KIND[kind]].add(arch)
                if ehsize == 0:
                    break
                e += ehsize + esize
            pos = stop
    except struct.error:
        pass
    if not found["sass"] and not found["ptx"]:
        return None
    return {
        "sass": [f"sm_{a}" for a in sorted(found["sass"])],
        "ptx": [f"compute_{a}" for a in sorted(found["ptx"])],
    }


def runs_on(archs: dict[str, list[str]] | None, capability: tuple[int, int]) -> bool:
    """Whether code with these archs runs on a GPU of ``capability`` (major, minor): a cubin
    of the same major and a minor not above the GPU's, or PTX of an arch not above it."""
    if not archs:
        return False
    major, minor = capability
    dev = major * 10 + minor
    for a in archs.get("sass", []):
        n = int(a.split("_")[1].rstrip("a"))
        if n // 10 == major and n % 10 <= minor:
            return True
    return any(int(a.split("_")[1].rstrip("a")) <= dev for a in archs.get("ptx", []))
