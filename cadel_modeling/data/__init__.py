"""Long-tailed datasets as Hugging Face datasets, one builder per benchmark.

Every builder returns a ``LongTailedData``: a training split, evaluation splits ("val", "test"), class names,
the normalisation, and notes that say how the splits were made. ``build_datasets`` then checks the data before any
training starts (labels, empty classes, class count, missing image files), fills in the training counts per class
(these give the many/medium/few groups and the logit-adjustment prior, and are saved with the model) and, with
``cfg.streaming``, turns the training split into a sharded, shuffled ``IterableDataset``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .cifar import build_cifar10_lt, build_cifar100_lt
from .fashion_mnist import build_fashion_mnist_lt
from .image_lists import build_imagenet_lt, build_inat18, build_places_lt
from .long_tail import long_tailed_counts, subsample_long_tailed
from .streaming import stream_train_split
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SkipCounter,
    UnreadableImageError,
    build_transform,
    collate,
    load_image,
    with_image_transform,
)
from .user_data import build_hub, build_imagefolder

MISSING_SHOWN = 5


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
    color_jitter: Optional[float] = None            # set by datasets trained without it (iNat18: 0), else cfg's
    skipped_images: SkipCounter = field(default_factory=SkipCounter)  # unreadable images skipped by the loaders

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train_images(self) -> int:
        return int(sum(self.class_counts))


DATASET_BUILDERS: Dict[str, Callable] = {
    "fashion_mnist_lt": build_fashion_mnist_lt,
    "imagenet_lt": build_imagenet_lt,
    "places_lt": build_places_lt,
    "inat18": build_inat18,
    "cifar10_lt": build_cifar10_lt,
    "cifar100_lt": build_cifar100_lt,
    "imagefolder": build_imagefolder,
    "hub": build_hub,
}


def label_array(dataset, label_column: str) -> np.ndarray:
    """A map-style split's labels as int64, read from Arrow (iterating the column in Python takes seconds)."""
    return dataset.with_format("arrow")[label_column].to_numpy().astype(np.int64)


def count_labels(labels: Sequence[int], num_classes: int) -> List[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def validate_labels(labels: Sequence[int], num_classes: int, split: str) -> None:
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise ValueError(f"{split}: {len(bad)} labels outside [0, {num_classes}), first at rows "
                         f"{bad[:5].tolist()} (values {labels[bad[:5]].tolist()}); fix the label list or num_classes")


def local_image_paths(dataset, image_column: str) -> List[str]:
    """Paths of the images a map-style split reads from local files (rows of an ``Image`` column without bytes)."""
    from datasets import Image
    if not isinstance(dataset.features.get(image_column), Image):
        return []
    cells = dataset.with_format("arrow")[image_column].combine_chunks()
    paths = cells.field("path").to_pylist()
    has_bytes = cells.field("bytes").is_valid().to_numpy(zero_copy_only=False)
    return [p for p, b in zip(paths, has_bytes) if not b and p is not None and "://" not in p]


def check_image_files(dataset, image_column: str, split: str) -> None:
    """One ``os.path.exists`` per image (about a second for iNat18's 437k), so a wrong root fails now, not mid-epoch."""
    paths = local_image_paths(dataset, image_column)
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{split}: {len(missing)} of {len(paths)} image files are missing, first: {missing[:MISSING_SHOWN]}. "
            f"Check --data_dir (the image root the split list paths are relative to) or remove their list lines")


def is_streamed(dataset) -> bool:
    from datasets import IterableDataset
    return isinstance(dataset, IterableDataset)


def build_datasets(cfg) -> LongTailedData:
    """Build ``cfg.dataset``, check it before training, and fill in the training counts per class."""
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
        labels = label_array(data.train, data.label_column)
        validate_labels(labels, c, "train")
        data.class_counts = count_labels(labels, c)
    elif len(data.class_counts) != c:
        raise ValueError(f"train: class counts cover {len(data.class_counts)} classes but the dataset has {c}; "
                         f"labels outside [0, {c}) or a count file for another dataset")
    checked = set()
    for name, split in [("train", data.train)] + list(data.splits.items()):
        if not is_streamed(split) and id(split) not in checked:
            checked.add(id(split))
            if name != "train":
                validate_labels(label_array(split, data.label_column), c, name)
            check_image_files(split, data.image_column, name)
    empty = [i for i, n in enumerate(data.class_counts) if n == 0]
    if empty:
        raise ValueError(f"{len(empty)} classes have no training image (first: {empty[:5]}); the logit-adjustment "
                         f"prior needs every class: fix the split or drop those classes")
    if cfg.streaming and not is_streamed(data.train):
        data.train = stream_train_split(data.train, cfg)
        data.notes.append(f"train split streamed in {data.train.num_shards} shards, "
                          f"shuffle buffer {cfg.shuffle_buffer}")
    return data


__all__ = ["LongTailedData", "DATASET_BUILDERS", "build_datasets", "build_transform", "with_image_transform",
           "collate", "long_tailed_counts", "subsample_long_tailed", "count_labels", "validate_labels",
           "label_array", "check_image_files", "is_streamed", "load_image", "UnreadableImageError"]
