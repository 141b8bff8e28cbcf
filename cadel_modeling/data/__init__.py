"""Long-tailed datasets as Hugging Face datasets, one builder per benchmark.

Every builder returns a ``LongTailedData``: a training split, evaluation splits ("val", "test"), class names,
the normalisation, and notes that say how the splits were made. Training counts per class always come from the
training split itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .fashion_mnist import build_fashion_mnist_lt
from .long_tail import long_tailed_counts, subsample_long_tailed
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
    collate,
    with_image_transform,
)


@dataclass
class LongTailedData:
    train: object                                   # datasets.Dataset or IterableDataset, columns image/label
    splits: Dict[str, object]                       # evaluation splits, e.g. {"val": ..., "test": ...}
    class_names: List[str]
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    notes: List[str] = field(default_factory=list)
    class_counts: Optional[List[int]] = None        # filled from the training labels by build_datasets
    image_column: str = "image"
    label_column: str = "label"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DATASET_BUILDERS: Dict[str, Callable] = {
    "fashion_mnist_lt": build_fashion_mnist_lt,
}


def count_labels(labels: Sequence[int], num_classes: int) -> List[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def validate_labels(labels: Sequence[int], num_classes: int, split: str) -> None:
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise ValueError(f"{split}: {len(bad)} labels outside [0, {num_classes}), first at rows "
                         f"{bad[:5].tolist()} (values {labels[bad[:5]].tolist()}); fix the label list or num_classes")


def build_datasets(cfg) -> LongTailedData:
    """Build ``cfg.dataset``, check labels and class counts, and fill in the training counts per class."""
    if cfg.dataset not in DATASET_BUILDERS:
        import difflib
        close = difflib.get_close_matches(cfg.dataset, list(DATASET_BUILDERS), n=1)
        raise ValueError(f"unknown dataset {cfg.dataset!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" Available: {', '.join(sorted(DATASET_BUILDERS))}")
    data = DATASET_BUILDERS[cfg.dataset](cfg)
    c = data.num_classes
    if cfg.num_classes is not None and cfg.num_classes != c:
        raise ValueError(f"config says num_classes={cfg.num_classes} but {cfg.dataset} has {c} classes; "
                         f"fix --num_classes or the dataset")
    if data.class_counts is None:
        labels = data.train[data.label_column]
        validate_labels(labels, c, "train")
        data.class_counts = count_labels(labels, c)
    for name, split in data.splits.items():
        if hasattr(split, "column_names"):
            validate_labels(split[data.label_column], c, name)
    empty = [i for i, n in enumerate(data.class_counts) if n == 0]
    if empty:
        raise ValueError(f"{len(empty)} classes have no training image (first: {empty[:5]}); the logit-adjustment "
                         f"prior needs every class: fix the split or drop those classes")
    return data


__all__ = ["LongTailedData", "DATASET_BUILDERS", "build_datasets", "build_transform", "with_image_transform",
           "collate", "long_tailed_counts", "subsample_long_tailed", "count_labels", "validate_labels"]
