"""Fashion-MNIST-LT: the embedded default dataset (real images, small enough for a laptop CPU).

Read from the idx files Debian's ``dataset-fashion-mnist`` installs (or ``data_dir``) when present, otherwise from
the Hub (``zalando-datasets/fashion_mnist``). The training split is made long-tailed with the exponential profile;
a class-balanced validation split is drawn from the unused training images; the 10k test split is untouched.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..utils.errors import MissingInputError
from .long_tail import long_tailed_counts, subsample_long_tailed

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
HUB_ID = "zalando-datasets/fashion_mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.2860,) * 3, (0.3530,) * 3


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx_dir(data_dir):
    for d in ([data_dir] if data_dir else []) + [DEBIAN_DIR]:
        if d and all(any((Path(d) / f"{n}{ext}").exists() for ext in (".gz", ""))
                     for n in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")):
            return Path(d)
    if data_dir:
        raise MissingInputError(f"no Fashion-MNIST idx files in {data_dir}: it should hold "
                                f"{', '.join(f + '.gz' for f in IDX_FILES)} (or the same without .gz)")
    return None


def _load_arrays(data_dir):
    """(train_images, train_labels, test_images, test_labels) as uint8 / int64 numpy arrays."""
    d = _find_idx_dir(data_dir)
    if d is not None:
        def read(name):
            path = d / f"{name}.gz" if (d / f"{name}.gz").exists() else d / name
            return _read_idx(path)
        return (read("train-images-idx3-ubyte"), read("train-labels-idx1-ubyte").astype(np.int64),
                read("t10k-images-idx3-ubyte"), read("t10k-labels-idx1-ubyte").astype(np.int64))
    from datasets import load_dataset  # online users: the same data from the Hub
    try:
        hub = load_dataset(HUB_ID)
    except Exception as exc:  # noqa: BLE001 - offline, blocked or missing: say where the files go instead
        raise MissingInputError(
            f"Fashion-MNIST not found: put {', '.join(f + '.gz' for f in IDX_FILES)} in --data_dir (or run apt-get "
            f"install dataset-fashion-mnist, which puts them in {DEBIAN_DIR}); the Hub dataset {HUB_ID} could not "
            f"be loaded either ({type(exc).__name__})") from exc
    arrays = []
    for split in ("train", "test"):
        arrays += [np.stack([np.asarray(im) for im in hub[split]["image"]]), np.asarray(hub[split]["label"], np.int64)]
    return tuple(arrays)


DEFAULT_N_MAX, DEFAULT_IMB_FACTOR = 500, 100.0


def build_fashion_mnist_lt(opts):
    from datasets import ClassLabel, Dataset, Features, Image

    from .base import LongTailedData

    x_train, y_train, x_test, y_test = _load_arrays(opts.data_dir)
    n_max = opts.n_max or DEFAULT_N_MAX
    imb_factor = opts.imb_factor if opts.imb_factor is not None else DEFAULT_IMB_FACTOR
    counts = long_tailed_counts(n_max, len(CLASS_NAMES), imb_factor, opts.imb_type, CLASS_NAMES)
    train_idx, val_idx = subsample_long_tailed(y_train, counts, seed=opts.seed, val_per_class=opts.val_per_class,
                                               class_names=CLASS_NAMES)
    features = Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})

    def make(images, labels):
        return Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)

    return LongTailedData(
        train=make(x_train[train_idx], y_train[train_idx]),
        splits={"val": make(x_train[val_idx], y_train[val_idx]), "test": make(x_test, y_test)},
        class_names=list(CLASS_NAMES), mean=MEAN, std=STD, trusted_images=True,
        notes=[f"Fashion-MNIST-LT: {opts.imb_type} profile, n_max={n_max}, IF={imb_factor:g}, seed={opts.seed}; "
               f"val = {opts.val_per_class}/class from unused training images; test = the balanced 10k test set"])
