"""ImageNet-LT and Places-LT from the standard split lists, iNaturalist 2018 from its official JSON files.

Rows hold the absolute image path in a ``datasets.Image`` column (no pixels) and an integer label, so even iNat18's
437k training images cost tens of MB; DataLoader workers decode them (``transforms.DecodeAndTransform``).
The lists name images relative to an image root: ``cfg.image_root`` when the config has it, else ``cfg.data_dir``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..utils.errors import DataError, MissingInputError
from .transforms import INAT_MEAN, INAT_STD

OLTR_LISTS = ("the OLTR split lists (github.com/zhmiao/OpenLongTailRecognition-OLTR, linked from its README; also in "
              "facebookresearch/classifier-balancing)")
SPLIT_LISTS = {
    "imagenet_lt": {"prefix": "ImageNet_LT", "title": "ImageNet-LT",
                    "images": "the ImageNet-2012 images (image-net.org), with train/ and val/ under --data_dir"},
    "places_lt": {"prefix": "Places_LT", "title": "Places-LT",
                  "images": "the Places365-Standard images (places2.csail.mit.edu) under --data_dir"},
}
INAT_SOURCE = ("the iNaturalist 2018 competition files (github.com/visipedia/inat_comp/tree/master/2018): "
               "train2018.json, val2018.json and the train_val2018/ images, all under --data_dir")


def image_root(cfg) -> str:
    return cfg.image_root or cfg.data_dir


def find_file(data_dir, filename: str, what: str, source: str) -> Path:
    """``filename`` in ``data_dir`` or a sub-folder, or an error saying what the file is and where to get it."""
    if not data_dir:
        raise MissingInputError(f"{what} needs --data_dir: the folder holding {filename}. Get {source}")
    root = Path(data_dir)
    candidates = [root / filename] + sorted(root.glob(f"*/{filename}"))
    for path in candidates:
        if path.is_file():
            return path
    raise MissingInputError(f"{what}: {filename} not found in {root} or its sub-folders. Get {source}")


def read_split_list(path: Path) -> Tuple[List[str], np.ndarray]:
    """``<relative path> <label>`` per line -> (relative paths, int64 labels)."""
    paths, labels = [], []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{path}:{number}: expected '<relative image path> <integer label>', got {line!r}")
            paths.append(parts[0].lstrip("/"))
            labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"{path} is empty; expected '<relative image path> <integer label>' per line")
    return paths, np.asarray(labels, dtype=np.int64)


def path_dataset(root: str, relative_paths: Sequence[str], labels: np.ndarray):
    """A ``datasets.Dataset`` with an ``image`` column of absolute paths (decoded lazily) and an int ``label``."""
    from datasets import Dataset, Image
    root = os.path.abspath(root)
    return Dataset.from_dict({"image": [os.path.join(root, p) for p in relative_paths],
                              "label": labels}).cast_column("image", Image())


def class_names_from_paths(relative_paths: Sequence[str], labels: np.ndarray, num_classes: int) -> List[str]:
    """Each class's folder (``train/n01440764/x.JPEG`` -> ``n01440764``) when every image of the class shares one
    folder, minus the leading folders all classes share; otherwise the class index."""
    folders: Dict[int, set] = {}
    for path, label in zip(relative_paths, labels.tolist()):
        folders.setdefault(label, set()).add(os.path.dirname(path))
    if set(folders) != set(range(num_classes)) or any(len(f) != 1 for f in folders.values()):
        return [str(c) for c in range(num_classes)]
    parents = [next(iter(folders[c])).split("/") for c in range(num_classes)]
    shared = 0
    while all(len(p) > shared + 1 and p[shared] == parents[0][shared] for p in parents):
        shared += 1
    return ["/".join(p[shared:]) for p in parents]


def build_split_list_dataset(name: str, data_dir, root):
    """ImageNet-LT / Places-LT: ``<Prefix>_{train,val,test}.txt`` in ``data_dir`` (or a sub-folder), images under
    ``root``."""
    from .base import LongTailedData
    spec = SPLIT_LISTS[name]
    lists = {}
    for split in ("train", "val", "test"):
        filename = f"{spec['prefix']}_{split}.txt"
        source = f"{OLTR_LISTS}, put them in --data_dir (or a sub-folder), and {spec['images']}"
        lists[split] = read_split_list(find_file(data_dir, filename, f"{spec['title']} {split} split list", source))
    num_classes = int(max(labels.max() for _, labels in lists.values())) + 1
    if not root or not Path(root).is_dir():
        raise MissingInputError(f"{spec['title']} image root {root!r} is not a folder; the split lists name images "
                                f"relative to it: get {spec['images']}")
    datasets = {split: path_dataset(root, paths, labels) for split, (paths, labels) in lists.items()}
    train_paths, train_labels = lists["train"]
    return LongTailedData(
        train=datasets["train"], splits={"val": datasets["val"], "test": datasets["test"]},
        class_names=class_names_from_paths(train_paths, train_labels, num_classes),
        notes=[f"{spec['title']}: standard split lists from {data_dir}, images under {root}; "
               f"{len(train_labels)} train / {len(lists['val'][0])} val / {len(lists['test'][0])} test images; "
               f"the checkpoint and tau are chosen on val, results reported on test"])


def build_imagenet_lt(cfg):
    return build_split_list_dataset("imagenet_lt", cfg.data_dir, image_root(cfg))


def build_places_lt(cfg):
    return build_split_list_dataset("places_lt", cfg.data_dir, image_root(cfg))


def read_inat_json(path: Path) -> Tuple[List[str], np.ndarray, List[dict]]:
    """(file names, labels = the annotations' category_id, categories) of an iNat JSON file, checking that every
    image has exactly one annotation (the original's ``gen_lists.py`` asserts image and annotation ids line up)."""
    with open(path) as fh:
        meta = json.load(fh)
    for key in ("images", "annotations"):
        if key not in meta:
            raise DataError(f"{path} has no {key!r} list; is it an iNaturalist train/val JSON file? "
                            f"(the test JSON has no labels)")
    category_of = {}
    for ann in meta["annotations"]:
        if ann["image_id"] in category_of:
            raise DataError(f"{path}: image id {ann['image_id']} has more than one annotation")
        category_of[ann["image_id"]] = ann["category_id"]
    image_ids = [im["id"] for im in meta["images"]]
    unmatched = [i for i in image_ids if i not in category_of]
    if unmatched or len(category_of) != len(image_ids):
        raise DataError(f"{path}: image and annotation ids do not line up ({len(image_ids)} images, "
                        f"{len(category_of)} annotations; images without annotation: {unmatched[:5]})")
    labels = np.asarray([category_of[i] for i in image_ids], dtype=np.int64)
    return [im["file_name"] for im in meta["images"]], labels, meta.get("categories", [])


def build_inat18(cfg):
    """iNaturalist 2018: the official val set is the reported split, used for model selection as well."""
    from .base import LongTailedData
    train_json = find_file(cfg.data_dir, "train2018.json", "iNaturalist 2018 training annotations", INAT_SOURCE)
    val_json = find_file(cfg.data_dir, "val2018.json", "iNaturalist 2018 validation annotations", INAT_SOURCE)
    train_names, train_labels, categories = read_inat_json(train_json)
    val_names, val_labels, _ = read_inat_json(val_json)
    root = image_root(cfg)
    num_classes = len(categories) or int(max(train_labels.max(), val_labels.max())) + 1
    names = {c["id"]: c.get("name", str(c["id"])) for c in categories}
    val = path_dataset(root, val_names, val_labels)
    return LongTailedData(
        train=path_dataset(root, train_names, train_labels), splits={"val": val, "test": val},
        class_names=[names.get(c, str(c)) for c in range(num_classes)],
        mean=INAT_MEAN, std=INAT_STD, color_jitter=0.0,
        notes=[f"iNaturalist 2018: {len(train_labels)} train images from train2018.json, {len(val_labels)} images "
               f"from val2018.json; images under {root}",
               "iNat18 has no separate val: checkpoint and tau are chosen on the reported set (val2018 = 'test'), "
               "as the community does",
               "iNat18 trains without ColorJitter and with its own mean/std, as the original (--color_jitter ignored)"])
