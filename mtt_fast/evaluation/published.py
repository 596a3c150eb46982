"""Published accuracies to put beside a run's own (ConvNet, test accuracy in %, mean +- std).

* CIFAR-10, CIFAR-100, Tiny ImageNet: Table 1 of Cazenavette et al., "Dataset
  Distillation by Matching Training Trajectories" (CVPR 2022): the random and herding
  coreset rows and MTT, plus the full-data accuracy.
* MNIST, Fashion-MNIST: not in the MTT paper. The MTT numbers are reruns printed by later
  papers and are labelled ``"rerun by later work"``, never ``"paper"``.

Any other dataset (e.g. the 4,000-image CIFAR-10 slice) has no published reference: its
numbers are not comparable with a paper's.
"""

from __future__ import annotations

__all__ = ["PUBLISHED", "FULL_DATA", "published", "SOURCES"]

PAPER = "paper"
RERUN = "rerun by later work"
SOURCES = {
    PAPER: "Cazenavette et al., CVPR 2022, Table 1 (ConvNet)",
    RERUN: "MTT rerun by later papers (not in the MTT paper; ConvNet)",
}

# dataset -> ipc -> method -> (mean %, std %, source)
PUBLISHED: dict[str, dict[int, dict[str, tuple[float, float, str]]]] = {
    "cifar10": {
        1: {"random": (14.4, 2.0, PAPER), "herding": (21.5, 1.2, PAPER), "mtt": (46.3, 0.8, PAPER)},
        10: {"random": (26.0, 1.2, PAPER), "herding": (31.6, 0.7, PAPER), "mtt": (65.3, 0.7, PAPER)},
        50: {"random": (43.4, 1.0, PAPER), "herding": (40.4, 0.6, PAPER), "mtt": (71.6, 0.2, PAPER)},
    },
    "cifar100": {
        1: {"random": (4.2, 0.3, PAPER), "herding": (8.4, 0.3, PAPER), "mtt": (24.3, 0.3, PAPER)},
        10: {"random": (14.6, 0.5, PAPER), "herding": (17.3, 0.3, PAPER), "mtt": (40.1, 0.4, PAPER)},
        50: {"random": (30.0, 0.4, PAPER), "herding": (33.7, 0.5, PAPER), "mtt": (47.7, 0.2, PAPER)},
    },
    "tinyimagenet": {
        1: {"random": (1.4, 0.1, PAPER), "herding": (2.8, 0.2, PAPER), "mtt": (8.8, 0.3, PAPER)},
        10: {"random": (5.0, 0.2, PAPER), "herding": (6.3, 0.2, PAPER), "mtt": (23.2, 0.2, PAPER)},
        50: {"random": (15.0, 0.4, PAPER), "herding": (16.7, 0.3, PAPER), "mtt": (28.0, 0.3, PAPER)},
    },
    "mnist": {
        1: {"mtt": (91.4, 0.9, RERUN)},
        10: {"mtt": (97.3, 0.1, RERUN)},
        50: {"mtt": (98.5, 0.1, RERUN)},
    },
    "fashionmnist": {
        1: {"mtt": (75.1, 0.9, RERUN)},
        10: {"mtt": (87.2, 0.3, RERUN)},
        50: {"mtt": (88.3, 0.1, RERUN)},
    },
}  # fmt: skip

FULL_DATA: dict[str, tuple[float, float, str]] = {
    "cifar10": (84.8, 0.1, PAPER),
    "cifar100": (56.2, 0.3, PAPER),
    "tinyimagenet": (37.6, 0.4, PAPER),
}


def _key(dataset: str) -> str:
    from mtt_fast.data import canonical_name

    try:
        return canonical_name(dataset)
    except ValueError:
        return dataset.lower()


def published(dataset: str, ipc: int) -> dict[str, dict]:
    """The published references for ``(dataset, ipc)``.

    Args:
        dataset: any spelling :func:`mtt_fast.data.canonical_name` accepts.
        ipc: images per class.

    Returns:
        ``{method: {"mean", "std", "source", "cite"}}`` with accuracies as fractions in
        [0, 1] (as in report.json) for the methods that have one (``"mtt"``, ``"random"``,
        ``"herding"``, and ``"full_data"`` where known); ``{}`` for unknown settings.
    """
    key = _key(dataset)
    rows = PUBLISHED.get(key, {}).get(int(ipc), {})
    out = {
        m: {"mean": mean / 100, "std": std / 100, "source": src, "cite": SOURCES[src]}
        for m, (mean, std, src) in rows.items()
    }
    if out and key in FULL_DATA:
        mean, std, src = FULL_DATA[key]
        out["full_data"] = {"mean": mean / 100, "std": std / 100, "source": src, "cite": SOURCES[src]}
    return out
