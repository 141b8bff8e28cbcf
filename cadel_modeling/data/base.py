"""What every dataset builder returns (``LongTailedData``), the options builders read (``DataOptions``), and the
checks made before any training starts: labels in range, image files present, names for every class."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..utils.errors import DataError, MissingInputError
from .decoding import CONSTANT_CHECK_IMAGES, UnreadableImageError, constant_images, load_image
from .transforms import IMAGENET_MEAN, IMAGENET_STD, SkipCounter, undecoded

logger = logging.getLogger(__name__)

MISSING_SHOWN = 5
DECODE_THREADS = 8


@dataclass(frozen=True)
class DataOptions:
    """What the builders read; ``from_config`` takes it from a run config."""

    dataset: str = "fashion_mnist_lt"
    data_dir: Optional[str] = None
    image_root: Optional[str] = None
    train_dir: Optional[str] = None
    validation_dir: Optional[str] = None
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
    bad_image_policy: str = "fail"

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
    trusted_images: bool = False                    # images the builder encoded itself (no decode check needed)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train_images(self) -> int:
        return int(sum(self.class_counts))

    def train_color_jitter(self, requested: float) -> float:
        """The ColorJitter strength training uses: the dataset's own where it sets one (iNat18: 0), else requested."""
        return requested if self.color_jitter is None else self.color_jitter


def label_array(dataset, label_column: str) -> np.ndarray:
    """A map-style split's labels as int64, read from Arrow (iterating the column in Python takes seconds)."""
    return dataset.with_format("arrow")[label_column].to_numpy().astype(np.int64)


def count_labels(labels: Sequence[int], num_classes: int) -> List[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def validate_labels(labels: Sequence[int], num_classes: int, split: str) -> None:
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(f"{split}: {len(bad)} labels outside [0, {num_classes}), first at rows "
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
        raise MissingInputError(
            f"{split}: {len(missing)} of {len(paths)} image files are missing, first: {missing[:MISSING_SHOWN]}. "
            f"Check --data_dir (the image root the split list paths are relative to) or remove their list lines")


def is_streamed(dataset) -> bool:
    from datasets import IterableDataset
    return isinstance(dataset, IterableDataset)


def warn_if_constant(split, data: LongTailedData, name: str) -> None:
    """One warning line when the first images of a map-style split all decode to a single value each: blank inputs
    train at chance with nothing else going wrong (e.g. 16-bit files read as white by a plain ``convert("RGB")``)."""
    if is_streamed(split) or len(split) == 0:
        return
    head = undecoded(split.select(range(min(len(split), 2 * CONSTANT_CHECK_IMAGES))), data.image_column)
    flat = constant_images(head[data.image_column])
    if flat:
        logger.warning("%s: the first %d images each decode to a single flat value (blank inputs train at chance); "
                       "check the image files", name, flat)


def _unreadable(cell) -> Optional[str]:
    """None when the image decodes (JPEGs at reduced size: a truncated file still fails), else why not."""
    try:
        load_image(cell, min_side=64)
        return None
    except UnreadableImageError as exc:
        return str(exc)


def drop_or_refuse_unreadable(split, data: LongTailedData, name: str, policy: str):
    """Decode every image of an evaluation split now. 'fail': an error naming the unreadable files; 'skip': the
    split without them (an evaluation must not stand in another image for a broken one), noted in ``data.notes``."""
    if is_streamed(split):
        return split
    from concurrent.futures import ThreadPoolExecutor
    cells = undecoded(split, data.image_column)[data.image_column]
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        problems = list(pool.map(_unreadable, cells))
    bad = [i for i, p in enumerate(problems) if p is not None]
    if not bad:
        return split
    shown = "; ".join(problems[i] for i in bad[:MISSING_SHOWN])
    if policy != "skip":
        raise UnreadableImageError(f"{name}: {len(bad)} of {len(problems)} images cannot be read ({shown}). Replace "
                                   f"or delete them (and their split-list lines), or pass --bad_image_policy skip "
                                   f"to leave them out of the {name} split")
    data.notes.append(f"{name}: {len(bad)} unreadable images left out ({shown})")
    keep = sorted(set(range(len(problems))) - set(bad))
    return split.select(keep)


def label_names(data: LongTailedData) -> None:
    """Give every map-style split a ``ClassLabel`` label feature with the class names (kept when it has one)."""
    from datasets import ClassLabel
    names = [str(n) for n in data.class_names]
    if len(set(names)) != len(names):  # ClassLabel needs distinct names
        names = [f"{n} ({i})" for i, n in enumerate(names)]
    feature = ClassLabel(names=names)
    for key in ["train"] + list(data.splits):
        split = data.train if key == "train" else data.splits[key]
        if is_streamed(split) or isinstance(split.features.get(data.label_column), ClassLabel):
            continue
        cast = split.cast_column(data.label_column, feature)
        if key == "train":
            data.train = cast
        else:
            data.splits = {k: (cast if v is split else v) for k, v in data.splits.items()}
