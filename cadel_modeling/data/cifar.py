"""CIFAR-10-LT and CIFAR-100-LT exactly as LDAM-DRW builds them (the version every CIFAR-LT number refers to).

Profile ``n_i = int(n_max * (1/IF)^(i/(C-1)))`` (or ``step``), images picked per class in label order after a seed-0
shuffle, without replacement: CIFAR-100 at IF 100 gives 10,847 images. The seed is 0 whatever the run seed, so every
run trains on the same subset, as in the papers. Read from the CIFAR python pickles in ``data_dir``
(``cifar-10-batches-py/``, ``cifar-100-python/``) or else from the Hub (``uoft-cs/cifar10``, ``uoft-cs/cifar100``).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Optional

import numpy as np

from ..utils.errors import DataError, MissingInputError
from .long_tail import long_tailed_counts, subsample_long_tailed
from .transforms import CIFAR_MEAN, CIFAR_STD

SUBSET_SEED = 0
DEFAULT_IMB_FACTOR = 100.0
CIFAR = {
    "cifar10_lt": {"title": "CIFAR-10-LT", "folder": "cifar-10-batches-py", "meta": "batches.meta",
                   "names_key": "label_names", "label_key": "labels", "n_max": 5000,
                   "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                   "hub": "uoft-cs/cifar10", "hub_label": "label"},
    "cifar100_lt": {"title": "CIFAR-100-LT", "folder": "cifar-100-python", "meta": "meta",
                    "names_key": "fine_label_names", "label_key": "fine_labels", "n_max": 500,
                    "train": ["train"], "test": ["test"], "hub": "uoft-cs/cifar100", "hub_label": "fine_label"},
}


class DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's python batches hold: dicts, lists, bytes, numbers and numpy arrays. Any other
    class a file names (a crafted file's ``os.system``, say) is refused before it is looked up, so nothing runs."""

    ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not data")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            data = DataOnlyUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR python batch file ({exc}); it was refused without running it. "
                        f"Download the python version from www.cs.toronto.edu/~kriz/cifar.html again") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a {type(data).__name__}, not a CIFAR batch dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def find_pickles(spec: dict, data_dir) -> Optional[Path]:
    """The CIFAR python folder in ``data_dir`` (or ``data_dir`` itself), None when ``data_dir`` is not set."""
    if not data_dir:
        return None
    for folder in (Path(data_dir) / spec["folder"], Path(data_dir)):
        if (folder / spec["meta"]).is_file():
            return folder
    raise MissingInputError(f"no {spec['title']} pickles ({spec['folder']}/{spec['meta']}, {spec['train'][0]}, ...) in "
                            f"{data_dir}; download the python version from www.cs.toronto.edu/~kriz/cifar.html and "
                            f"extract it there, or drop --data_dir to read {spec['hub']} from the Hub")


def read_pickles(folder: Path, spec: dict, files) -> tuple:
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) from CIFAR python batch files."""
    batches = [_unpickle(folder / name) for name in files]
    images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([np.asarray(b[spec["label_key"]], dtype=np.int64) for b in batches])
    return np.ascontiguousarray(images), labels


def _bmp(image: np.ndarray) -> dict:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="BMP")   # uncompressed: encodes ~5x faster than PNG
    return {"bytes": buffer.getvalue(), "path": None}


def array_dataset(images: np.ndarray, labels: np.ndarray):
    from datasets import Dataset, Features, Image, Value
    return Dataset.from_dict({"image": [_bmp(im) for im in images], "label": labels},
                             features=Features({"image": Image(), "label": Value("int64")}))


def take(images, labels: np.ndarray, indices: np.ndarray):
    """Rows ``indices`` as a dataset: a pixel array is encoded now, a Hub dataset is only indexed."""
    if isinstance(images, np.ndarray):
        return array_dataset(images[indices], labels[indices])
    return images.select(indices)


def build_cifar_lt(cfg, name: str):
    from .base import LongTailedData, label_array
    spec = CIFAR[name]
    folder = find_pickles(spec, cfg.data_dir)
    if folder is not None:
        names = _unpickle(folder / spec["meta"])[spec["names_key"]]
        class_names = [n.decode() if isinstance(n, bytes) else n for n in names]
        train_images, train_labels = read_pickles(folder, spec, spec["train"])
        test = array_dataset(*read_pickles(folder, spec, spec["test"]))
        source = str(folder)
    else:
        from datasets import load_dataset
        try:
            hub = load_dataset(spec["hub"])
        except Exception as exc:  # noqa: BLE001 - offline, blocked or missing: say where the files go instead
            raise MissingInputError(
                f"{spec['title']} not found: download the python version from www.cs.toronto.edu/~kriz/cifar.html and "
                f"pass --data_dir holding {spec['folder']}/ ({spec['meta']}, {', '.join(spec['train'][:2])}, ..., "
                f"{spec['test'][0]}); the Hub dataset {spec['hub']} could not be loaded either "
                f"({type(exc).__name__})") from exc
        hub = hub.select_columns(["img", spec["hub_label"]])
        hub = hub.rename_columns({"img": "image", spec["hub_label"]: "label"})
        class_names = hub["train"].features["label"].names
        train_images, train_labels = hub["train"], label_array(hub["train"], "label")
        test, source = hub["test"], spec["hub"]
    n_max = cfg.n_max or spec["n_max"]
    imb_factor = cfg.imb_factor if cfg.imb_factor is not None else DEFAULT_IMB_FACTOR
    counts = long_tailed_counts(n_max, len(class_names), imb_factor, cfg.imb_type, class_names)
    train_idx, val_idx = subsample_long_tailed(train_labels, counts, seed=SUBSET_SEED, val_per_class=cfg.val_per_class,
                                               class_names=class_names)
    val_note = (f"val = {cfg.val_per_class}/class from unused training images" if cfg.val_per_class > 0 else
                "val = the test set, as the community does for CIFAR-LT (no separate val split; "
                "--val_per_class N carves one from unused training images)")
    return LongTailedData(
        train=take(train_images, train_labels, train_idx),
        splits={"val": take(train_images, train_labels, val_idx) if cfg.val_per_class > 0 else test, "test": test},
        class_names=list(class_names), mean=CIFAR_MEAN, std=CIFAR_STD, trusted_images=source != spec["hub"],
        notes=[f"{spec['title']} (LDAM-DRW profile) from {source}: {cfg.imb_type} profile, n_max={n_max}, "
               f"IF={imb_factor:g}, {len(train_idx)} training images, subset seed {SUBSET_SEED} whatever the run "
               f"seed; {val_note}; test = the balanced {len(test)}-image test set"])


def build_cifar10_lt(cfg):
    return build_cifar_lt(cfg, "cifar10_lt")


def build_cifar100_lt(cfg):
    return build_cifar_lt(cfg, "cifar100_lt")
