"""The user's own long-tailed data: a local image folder, or any Hub dataset id / local dataset folder with an image and
a label column. Splits named train / validation (or val, valid) / test become train / val / test."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from ..utils.errors import DataError, MissingInputError

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
COUNT_FILE = "num_shots.npz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _check_columns(split_name: str, column_names, image_column: str, label_column: str, source: str) -> None:
    missing = [c for c in (image_column, label_column) if c not in column_names]
    if missing:
        raise DataError(f"{source} split {split_name!r} has no column {missing[0]!r} (columns: {list(column_names)}); "
                        f"set --image_column / --label_column")


def class_names_of(feature, num_classes: int):
    """Names from a ``ClassLabel`` feature, else the class indices as strings."""
    names = getattr(feature, "names", None)
    return list(names) if names else [str(c) for c in range(num_classes)]


def _rename_splits(splits: Mapping, source: str) -> dict:
    unknown = [name for name in splits if name not in SPLIT_NAMES]
    if unknown:
        logger.warning("%s: ignoring splits %s (used: train, validation/val/valid, test)", source, unknown)
    return {SPLIT_NAMES[name]: ds for name, ds in splits.items() if name in SPLIT_NAMES}


def _evaluation_splits(named: dict, source: str):
    """({"val", "test"}, notes): a missing one of the two stands in for the other, and the notes say so."""
    if "val" not in named and "test" not in named:
        raise DataError(f"{source} has no validation or test split to choose the checkpoint and tau on; add one "
                        f"(imagefolder: a val/ or test/ folder with the same class folders)")
    notes = []
    if "val" not in named:
        notes.append("no validation split: the checkpoint and tau are chosen on test")
    if "test" not in named:
        notes.append("no test split: results are reported on the validation split")
    return {"val": named.get("val", named.get("test")), "test": named.get("test", named.get("val"))}, notes


def from_splits(splits: Mapping, image_column: str, label_column: str, source: str):
    """``LongTailedData`` from named map-style splits; string labels become a ``ClassLabel`` shared by all splits."""
    from datasets import ClassLabel

    from .base import LongTailedData, label_array
    named = _rename_splits(splits, source)
    if "train" not in named:
        raise DataError(f"{source} has no train split (splits: {list(splits)})")
    for name, ds in named.items():
        _check_columns(name, ds.column_names, image_column, label_column, source)
    feature = named["train"].features[label_column]
    if getattr(feature, "dtype", None) in ("string", "large_string"):
        names = sorted({label for ds in named.values() for label in ds.unique(label_column)})
        named = {name: ds.cast_column(label_column, ClassLabel(names=names)) for name, ds in named.items()}
        feature = named["train"].features[label_column]
    num_classes = len(feature.names) if isinstance(feature, ClassLabel) else \
        int(max(label_array(ds, label_column).max() for ds in named.values())) + 1
    evaluation, notes = _evaluation_splits(named, source)
    return LongTailedData(train=named["train"], splits=evaluation, class_names=class_names_of(feature, num_classes),
                          image_column=image_column, label_column=label_column,
                          notes=[f"{source}: {', '.join(f'{k} {len(v)}' for k, v in named.items())} images, "
                                 f"{num_classes} classes"] + notes)


def imagefolder_splits(opts) -> dict:
    """split name -> folder of ``<class>/<image>``: ``data_dir/{train,val,test}`` or the HF examples' ``train_dir`` and
    ``validation_dir``."""
    if opts.train_dir:
        return {"train": Path(opts.train_dir), **({"val": Path(opts.validation_dir)} if opts.validation_dir else {})}
    if not opts.data_dir or not (Path(opts.data_dir) / "train").is_dir():
        raise MissingInputError(f"the imagefolder dataset needs --data_dir holding train/<class name>/<images> (and "
                                f"optionally val/ and test/ with the same class folders); got {opts.data_dir!r}")
    return {split: Path(opts.data_dir) / split for split in SPLIT_NAMES if (Path(opts.data_dir) / split).is_dir()}


def check_imagefolder_layout(folders: Mapping[str, Path]) -> None:
    """Every split folder holds one folder per class and nothing else of note, and its classes are train's."""
    classes = {}
    for split, folder in folders.items():
        if not folder.is_dir():
            raise MissingInputError(f"{folder} is not a folder; the layout is {folder}/<class>/<image>")
        loose = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if loose:
            shown = ", ".join(loose[:3]) + (", ..." if len(loose) > 3 else "")
            raise DataError(f"{folder} holds images directly ({shown}); put each image in a folder named after its "
                            f"class: {folder}/<class>/<image>")
        classes[split] = {p.name for p in folder.iterdir() if p.is_dir()}
        if not classes[split]:
            raise DataError(f"{folder} has no class folders; the layout is {folder}/<class>/<image>")
    train = classes["train"]
    if len(train) < 2:
        raise DataError(f"{folders['train']} has one class folder ({', '.join(sorted(train))}); classification needs "
                        f"at least 2 classes: add a folder per class")
    empty = sorted(c for c in train if not any(p.suffix.lower() in IMAGE_SUFFIXES
                                               for p in (folders["train"] / c).rglob("*")))
    if empty:
        raise DataError(f"{folders['train']} has class folders without images: {empty[:10]}"
                        f"{' ...' if len(empty) > 10 else ''}; every class needs training images (add images, or "
                        f"remove those folders)")
    for split, found in classes.items():
        extra = sorted(found - train)
        if extra:
            raise DataError(f"{folders[split]} has class folders that train/ lacks: {extra[:10]}"
                            f"{' ...' if len(extra) > 10 else ''}; every class needs training images (fix the folder "
                            f"names, or remove those folders)")
        missing = sorted(train - found)
        if missing:
            logger.warning("%s has no images of %d classes (%s%s); their per-class accuracy on it is missing",
                           folders[split], len(missing), ", ".join(missing[:5]), " ..." if len(missing) > 5 else "")


def build_imagefolder(opts):
    """``data_dir/train/<class>/<image>`` (+ optional ``val/``, ``test/`` with the same class folders), or
    ``train_dir`` (+ ``validation_dir``) as in the HF examples."""
    from datasets import load_dataset
    folders = imagefolder_splits(opts)
    check_imagefolder_layout(folders)
    files = {split: str(folder / "**") for split, folder in folders.items()}
    source = f"imagefolder {opts.train_dir or opts.data_dir}"
    data = from_splits(load_dataset("imagefolder", data_files=files), "image", "label", source)
    return make_long_tailed(data, opts)


def make_long_tailed(data, opts):
    """With ``opts.imb_factor``: the training split subsampled to the long-tailed profile of the built-in datasets
    (seeded per class, ``n_max`` defaulting to the smallest class), and, when the data has no validation split,
    ``val_per_class`` images per class carved from the images left over. Without: the data as it is."""
    from .base import label_array
    from .long_tail import long_tailed_counts, subsample_long_tailed
    if opts.imb_factor is None:
        return data
    has_val = data.splits["val"] is not data.splits["test"]
    labels = label_array(data.train, data.label_column)
    available = np.bincount(labels, minlength=data.num_classes)
    carve = 0 if has_val else opts.val_per_class
    if available.min() == 0:
        shown = ", ".join(f"class {c} {data.class_names[c]!r}" for c in np.flatnonzero(available == 0)[:5])
        raise DataError(f"{shown}: no training image; every class needs training images for a long-tailed profile "
                         f"(add images, or remove the class)")
    n_max = opts.n_max or int(available.min()) - carve
    if n_max < 1:
        raise DataError(f"the smallest class has {int(available.min())} training images, too few to keep "
                        f"{carve} for validation; lower --val_per_class or pass --n_max")
    counts = long_tailed_counts(n_max, data.num_classes, opts.imb_factor, opts.imb_type, data.class_names)
    train_idx, val_idx = subsample_long_tailed(labels, counts, seed=opts.seed, val_per_class=carve,
                                               class_names=data.class_names)
    splits = dict(data.splits)
    if carve:
        splits["val"] = data.train.select(np.sort(val_idx))
    data.train = data.train.select(np.sort(train_idx))
    data.splits = splits
    data.notes.append(f"made long-tailed: {opts.imb_type} profile, n_max={n_max}, IF={opts.imb_factor:g}, seed "
                      f"{opts.seed} ({len(train_idx)} training images)"
                      + (f"; val = {carve}/class from unused training images" if carve else ""))
    return data


def read_count_file(path) -> list:
    """Training images per class from a ``num_shots.npz`` (key ``num_per_class``, as the CADEL/cRT repos ship)."""
    with np.load(path) as npz:
        if "num_per_class" not in npz:
            raise DataError(f"{path} has no 'num_per_class' array (keys: {list(npz)})")
        return np.asarray(npz["num_per_class"]).astype(np.int64).tolist()


def count_stream_labels(stream, label_column: str) -> list:
    """Per-class counts by one pass over the label column of a streamed split (when no count file gives them)."""
    labels = np.fromiter((row[label_column] for row in stream.select_columns([label_column])), dtype=np.int64)
    if len(labels) and labels.min() < 0:
        raise DataError(f"the streamed train split has negative labels (e.g. {labels[labels < 0][0]})")
    return np.bincount(labels).tolist()


def stream_hub(cfg, path: str):
    """A Hub dataset whose train split is streamed; the evaluation splits are loaded normally (they are small)."""
    from datasets import get_dataset_split_names, load_dataset

    from .base import LongTailedData, label_array
    train = load_dataset(path, cfg.hub_dataset_config, split="train", streaming=True,
                         revision=cfg.hub_dataset_revision)
    _check_columns("train", train.column_names or [], cfg.image_column, cfg.label_column, path)
    count_file = Path(cfg.data_dir) / COUNT_FILE if cfg.data_dir else None
    if count_file is not None and count_file.is_file():
        counts, how = read_count_file(count_file), f"class counts from {count_file}"
    else:
        logger.info("counting the labels of the streamed train split of %s (one pass over its label column; a %s in "
                    "--data_dir gives them without it)", path, COUNT_FILE)
        counts, how = count_stream_labels(train, cfg.label_column), "class counts from one pass over the labels"
    named = {SPLIT_NAMES[s]: load_dataset(path, cfg.hub_dataset_config, split=s, revision=cfg.hub_dataset_revision)
             for s in get_dataset_split_names(path, cfg.hub_dataset_config, revision=cfg.hub_dataset_revision)
             if SPLIT_NAMES.get(s) in ("val", "test")}
    for name, ds in named.items():
        _check_columns(name, ds.column_names, cfg.image_column, cfg.label_column, path)
    evaluation, notes = _evaluation_splits(named, path)
    feature = (train.features or {}).get(cfg.label_column)
    names = getattr(feature, "names", None)
    num_classes = len(names) if names else \
        max([len(counts)] + [int(label_array(ds, cfg.label_column).max()) + 1 for ds in named.values()])
    return LongTailedData(train=train, splits=evaluation,
                          class_names=class_names_of(feature, num_classes),
                          class_counts=counts + [0] * (num_classes - len(counts)), image_column=cfg.image_column,
                          label_column=cfg.label_column, notes=[f"{path}: train split streamed; {how}"] + notes)


def build_hub(opts):
    """``opts.hub_dataset_id``: a Hub dataset id (with ``hub_dataset_config`` / ``hub_dataset_revision``), a folder
    written by ``save_to_disk``, or a local data folder."""
    from datasets import load_dataset, load_from_disk
    path = opts.hub_dataset_id
    if path == "imagefolder":  # load_dataset("imagefolder", data_dir=...), spelled as in the HF examples
        return build_imagefolder(opts)
    if not path:
        raise DataError("--dataset hub needs --hub_dataset_id: a Hub dataset id (e.g. 'user/name') or a local "
                        "dataset folder, with --image_column / --label_column naming its columns")
    saved = Path(path, "dataset_dict.json").is_file() or Path(path, "state.json").is_file()
    if opts.streaming and not saved:
        if opts.imb_factor is not None:
            raise DataError("--imb_factor subsamples a map-style dataset; drop --streaming to make it long-tailed")
        return stream_hub(opts, path)
    try:
        splits = load_from_disk(path) if saved else load_dataset(path, opts.hub_dataset_config,
                                                                  revision=opts.hub_dataset_revision)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        raise MissingInputError(f"could not load {path!r}: not a local dataset folder (save_to_disk, or data files "
                                f"with train/validation/test splits) and not reachable as a Hub dataset id "
                                f"({type(exc).__name__}: {exc})") from exc
    data = from_splits(splits if isinstance(splits, Mapping) else {"train": splits}, opts.image_column,
                       opts.label_column, path)
    return make_long_tailed(data, opts)
