"""Scale-out with ``torch.distributed`` as started by ``torchrun`` (gloo on CPU, NCCL on GPU).

Nothing here starts processes: ``torchrun`` does, and sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``. :func:`setup` joins the process group
those variables describe (once per process), picks the backend from the device and, on
GPUs, gives each process its own device (``cuda:LOCAL_RANK``). Without those variables (or
with ``WORLD_SIZE=1``) everything is a no-op and the pipeline runs in one process.

Who does what:

* ``buffer``: every process claims and trains experts from one store (claims are files,
  :meth:`mtt_fast.experts.TrajectoryStore.claim`), so no collective is needed; expert ``k``
  is trained from seed ``seed + k`` whichever process trains it.
* ``distill --trajectories K``: every process draws the same K (expert, start epoch) pairs,
  process ``r`` matches pairs ``r, r + W, r + 2W, ...`` and one ``all_reduce`` sums their
  gradients (:func:`all_reduce_sum`); rank 0 alone writes checkpoints, metrics and the set,
  and runs the periodic evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch

__all__ = ["setup", "world", "is_main", "all_reduce_sum", "barrier", "on_main"]

T = TypeVar("T")

# a process waits this long at a collective for the others (rank 0's periodic evaluation
# at the paper's width takes minutes; the default of 10-30 minutes could run out)
TIMEOUT = timedelta(hours=6)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True in rank 0 (and in a single process): the one that writes outputs and prints.
    Before the group is joined, torchrun's ``RANK`` variable tells."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: str | torch.device = "cpu") -> torch.device:
    """Join the process group torchrun describes (if any) and return this process's device.

    Args:
        device: the requested device. ``"cuda"`` becomes ``cuda:LOCAL_RANK`` under torchrun.

    Returns:
        The device this process should use.

    Raises:
        RuntimeError: ``WORLD_SIZE > 1`` but ``torch.distributed`` is not available.
    """
    device = torch.device(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return device
    dist = _dist()
    if dist is None:
        raise RuntimeError(f"WORLD_SIZE={size} but this torch has no torch.distributed")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the processes in place (a no-op in one process); returns ``t``."""
    if world()[1] > 1:
        _dist().all_reduce(t)
    return t


def barrier() -> None:
    """Wait for every process (a no-op in one process)."""
    if world()[1] > 1:
        _dist().barrier()


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; every process then gets its result or its error.

    For checks with side effects (refusing or clearing an output folder): the others must
    not race rank 0, and must stop with the same one-line error when it stops.
    """
    rank, size = world()
    if size == 1:
        return fn()
    box: list[Any] = [None, None]
    if rank == 0:
        try:
            box[0] = fn()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            box[1] = (type(e), str(e))
    _dist().broadcast_object_list(box, src=0)
    if box[1] is not None:
        kind, msg = box[1]
        try:
            err = kind(msg)
        except Exception:  # noqa: BLE001 - an exception type with another signature
            err = RuntimeError(msg)
        raise err
    return box[0]
