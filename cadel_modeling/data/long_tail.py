"""Synthetic long-tailed profiles and subsampling, as LDAM-DRW built CIFAR-LT (the community standard)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..utils.errors import DataError


def _name(c: int, class_names: Optional[Sequence[str]]) -> str:
    return f"class {c} ({class_names[c]!r})" if class_names is not None else f"class {c}"


def long_tailed_counts(n_max: int, num_classes: int, imb_factor: float, imb_type: str = "exp",
                       class_names: Optional[Sequence[str]] = None) -> List[int]:
    """Images per class: ``exp`` gives ``int(n_max * (1/IF)^(i/(C-1)))``; ``step`` gives half the classes
    ``n_max`` and half ``int(n_max / IF)``. ``imb_factor`` is n_max/n_min (100 for 'IF 100')."""
    if imb_factor < 1:
        raise DataError(f"imb_factor is n_max/n_min and must be >= 1 (got {imb_factor}); 100 means 'IF 100'")
    ratio = 1.0 / imb_factor
    if imb_type == "exp":
        counts = [int(n_max * ratio ** (i / max(num_classes - 1.0, 1.0))) for i in range(num_classes)]
    elif imb_type == "step":
        half = num_classes // 2
        counts = [n_max] * half + [int(n_max * ratio)] * (num_classes - half)
    else:
        raise DataError(f"unknown imb_type {imb_type!r}; use 'exp' or 'step'")
    if counts and counts[-1] < 1:
        empty = counts.index(0)
        raise DataError(f"the long-tailed profile (n_max {n_max}, imb_factor {imb_factor:g}) leaves "
                        f"{_name(empty, class_names)} and {counts.count(0) - 1} more without images: raise "
                        f"--n_max to at least {int(np.ceil(imb_factor))} or lower --imb_factor to at most {n_max}")
    return counts


def subsample_long_tailed(labels: Sequence[int], counts: Sequence[int], seed: int = 0, val_per_class: int = 0,
                          class_names: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Pick ``counts[c]`` images of each class without replacement, LDAM-style (seeded numpy shuffle per class in
    label order), and optionally ``val_per_class`` more per class from the images left over.

    Returns (train_indices, val_indices) into ``labels``.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        if n + val_per_class > len(idx):
            raise DataError(f"{_name(c, class_names)} has {len(idx)} images, fewer than the {n} training + "
                            f"{val_per_class} validation images asked for; lower --n_max or --val_per_class")
        train.append(idx[:n])
        val.append(idx[n:n + val_per_class])
    return np.concatenate(train), np.concatenate(val)
