"""The dataset builders by name, and ``build_datasets``: build, check before training, count the classes."""
from __future__ import annotations

import difflib
from typing import Callable, Dict

from ..utils.errors import DataError
from .base import (
    DataOptions,
    LongTailedData,
    check_image_files,
    count_labels,
    drop_or_refuse_unreadable,
    is_streamed,
    label_array,
    label_names,
    validate_labels,
    warn_if_constant,
)
from .cifar import build_cifar10_lt, build_cifar100_lt
from .fashion_mnist import build_fashion_mnist_lt
from .image_lists import build_imagenet_lt, build_inat18, build_places_lt
from .streaming import stream_train_split
from .user_data import build_hub, build_imagefolder

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


def build_datasets(opts: DataOptions) -> LongTailedData:
    """Build ``opts.dataset``, check it before training, and fill in the training counts per class.

    Besides labels and files, every image of the evaluation splits is decoded now (in threads, at reduced size for
    JPEGs), so a corrupt validation or test image stops the run before the first epoch, not after it; with
    ``bad_image_policy="skip"`` those images are left out of the split and the notes say how many.
    """
    cfg = opts
    if cfg.dataset not in DATASET_BUILDERS:
        close = difflib.get_close_matches(cfg.dataset, list(DATASET_BUILDERS), n=1)
        raise DataError(f"unknown dataset {cfg.dataset!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                        + f" Available: {', '.join(sorted(DATASET_BUILDERS))}")
    data = DATASET_BUILDERS[cfg.dataset](cfg)
    c = data.num_classes
    if cfg.num_classes is not None and cfg.num_classes != c:
        raise DataError(f"config says num_classes={cfg.num_classes} but {cfg.dataset} has {c} classes; "
                        f"fix --num_classes or the dataset")
    if data.class_counts is None:
        labels = label_array(data.train, data.label_column)
        validate_labels(labels, c, "train")
        data.class_counts = count_labels(labels, c)
    elif len(data.class_counts) != c:
        raise DataError(f"train: class counts cover {len(data.class_counts)} classes but the dataset has {c}; "
                        f"labels outside [0, {c}) or a count file for another dataset")
    checked = set()
    for name, split in [("train", data.train)] + list(data.splits.items()):
        if not is_streamed(split) and id(split) not in checked:
            checked.add(id(split))
            if name != "train":
                validate_labels(label_array(split, data.label_column), c, name)
            check_image_files(split, data.image_column, name)
    empty_splits = [name for name, split in data.splits.items() if not is_streamed(split) and len(split) == 0]
    if empty_splits:
        raise DataError(f"the {' and '.join(empty_splits)} split{'s are' if len(empty_splits) > 1 else ' is'} empty: "
                        f"the best epoch and tau are chosen on validation; pass --val_per_class 1 or more")
    empty = [i for i, n in enumerate(data.class_counts) if n == 0]
    if empty:
        shown = ", ".join(f"class {i} {data.class_names[i]!r}" for i in empty[:5])
        raise DataError(f"{len(empty)} classes have no training image ({shown}); the logit-adjustment prior needs "
                        f"every class: fix the split or drop those classes")
    if not data.trusted_images:
        done = {}  # val and test may be one split (CIFAR-LT, iNat18): check it once
        for name, split in data.splits.items():
            if id(split) not in done:
                done[id(split)] = drop_or_refuse_unreadable(split, data, name, opts.bad_image_policy)
            data.splits[name] = done[id(split)]
    warned = set()
    for name, split in [("train", data.train)] + list(data.splits.items()):
        if id(split) not in warned:
            warned.add(id(split))
            warn_if_constant(split, data, name)
    label_names(data)
    if cfg.streaming and not is_streamed(data.train):
        data.train = stream_train_split(data.train, cfg)
        data.notes.append(f"train split streamed in {data.train.num_shards} shards, "
                          f"shuffle buffer {cfg.shuffle_buffer}")
    return data


