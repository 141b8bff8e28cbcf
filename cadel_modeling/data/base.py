"""What every dataset builder returns (``LongTailedData``), the options builders read (``DataOptions``), and the
checks made before any training starts: labels in range, image files present, names for every class."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .transforms import IMAGENET_MEAN, IMAGENET_STD, SkipCounter

MISSING_SHOWN = 5


@dataclass(frozen=True)
class DataOptions:
    """What the builders read; ``from_config`` takes it from a run config."""

    dataset: str = "fashion_mnist_lt"
    data_dir: Optional[str] = None
    image_root: Optional[str] = None
    hub_dataset_id: Optional[str] = None
    hub_dataset_config: Optional[str] = None
    hub_dataset_revision: Optional[str] = None
    image_column: str = "image"
    label_column: str = "label"
    num_classes: Optional[int] = None
    imb_factor: Optional[float] = None
    imb_type: str = "exp"
    n_max: Optional[int] = None
    val_per_class: int = 20
    seed: int = 0
    streaming: bool = False
    shuffle_buffer: int = 10000
    num_workers: int = 2

    @classmethod
    def from_config(cls, cfg) -> DataOptions:
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})


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


