"""Test-wide settings.

Triton kernels run on CPU tensors through the interpreter; the flag must be set before
triton is imported, so it is set here when no GPU is visible.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# no compile-on-first-use from inside the tests (tests/test_packaging.py tests it itself)
os.environ.setdefault("MTT_FAST_JIT", "0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root():
    """The project's real data folder, ``../shared/data`` beside the repository (skips if absent)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (the repository's ../shared/data)")
    return root
