"""Train/eval transforms (the original's, resolution-aware) and robust image decoding, run lazily in DataLoader workers.

Images stay undecoded in the datasets (a path or the encoded bytes per row), so a 437k-image split costs tens of MB of
memory; each worker decodes and augments only the rows of its batch. An unreadable image either stops the run with
its path (``bad_image_policy="fail"``) or is skipped, logged and counted (``"skip"``).
"""
from __future__ import annotations

import io
import logging
import random
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision import transforms as T

from ..utils.errors import UserError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)   # LDAM-DRW's values, used for CIFAR-10 and CIFAR-100
CIFAR_STD = (0.2023, 0.1994, 0.2010)

BAD_IMAGE_POLICIES = ("fail", "skip")
REPLACEMENT_TRIES = 20


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def build_transform(train: bool, image_size: int, mean: Sequence[float], std: Sequence[float],
                    augmentation: str = "imagenet", color_jitter: float = 0.4, hflip: bool = True) -> Callable:
    """'imagenet': RandomResizedCrop + flip (+ ColorJitter) for training, Resize(size*256/224) + CenterCrop for
    evaluation. 'small' (28-32 px data): resize, pad-size/8 random crop + flip. 'none': resize only. ``hflip=False``
    drops the flips (digits, text: a mirrored image is another class or none)."""
    flip = [T.RandomHorizontalFlip()] if hflip else []
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    rgb = T.Lambda(to_rgb)
    if augmentation == "imagenet":
        if not train:
            return T.Compose([rgb, T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)] + to_tensor)
        jitter = [T.ColorJitter(color_jitter, color_jitter, color_jitter, 0)] if color_jitter > 0 else []
        return T.Compose([rgb, T.RandomResizedCrop(image_size)] + flip + jitter + to_tensor)
    resize = [rgb, T.Resize((image_size, image_size))]
    if augmentation == "small" and train:
        return T.Compose(resize + [T.RandomCrop(image_size, padding=image_size // 8)] + flip + to_tensor)
    if augmentation in ("small", "none"):
        return T.Compose(resize + to_tensor)
    raise ValueError(f"unknown augmentation {augmentation!r}; use imagenet, small or none")


class UnreadableImageError(UserError, RuntimeError):
    """An image file that is missing, truncated or not an image."""


def load_image(value, draft: Optional[tuple] = None) -> PILImage.Image:
    """Decode one image cell: a path, an undecoded ``datasets.Image`` cell ``{"bytes", "path"}``, an array or a PIL
    image. Decoding is forced here, so a truncated file fails now and names its path. ``draft`` lets JPEGs decode at
    a reduced size (a check, not for training)."""
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, np.ndarray):
        return PILImage.fromarray(value)
    path, data = (value.get("path"), value.get("bytes")) if isinstance(value, dict) else (value, None)
    try:
        if data is None and path is not None and "://" in path:   # a remote file of a streamed Hub dataset
            from datasets import Image
            return Image().decode_example({"path": path, "bytes": None})
        image = PILImage.open(io.BytesIO(data) if data is not None else path)
        if draft is not None:
            image.draft("RGB", draft)
        image.load()
        return image
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImageError(f"cannot read image {path or '<embedded bytes>'}: {exc}") from exc


class SkipCounter:
    """Unreadable images skipped so far, summed over processes' DataLoader workers (a shared-memory slot per worker,
    so workers never race). ``int(counter)`` reads the total in the main process."""

    def __init__(self, slots: int = 257):
        self.counts = torch.zeros(slots, dtype=torch.int64).share_memory_()

    def add(self) -> int:
        info = torch.utils.data.get_worker_info()
        self.counts[0 if info is None else 1 + info.id % (len(self.counts) - 1)] += 1
        return int(self)

    def __int__(self) -> int:
        return int(self.counts.sum())


class DecodeAndTransform:
    """Batch transform: decode each image, apply ``transform``, emit ``pixel_values`` / ``labels``.

    With ``bad_image_policy="skip"`` an unreadable image is logged and counted; it is replaced by a random readable row
    of ``fallback`` (map-style data, keeping batches full) or, with no fallback (streamed data), dropped.
    """

    def __init__(self, transform: Callable, image_column: str = "image", label_column: str = "label",
                 bad_image_policy: str = "fail", fallback=None, skipped: Optional[SkipCounter] = None):
        if bad_image_policy not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_image_policy={bad_image_policy!r}; use one of {BAD_IMAGE_POLICIES}")
        self.transform, self.image_column, self.label_column = transform, image_column, label_column
        self.bad_image_policy, self.fallback = bad_image_policy, fallback
        self.skipped = skipped if skipped is not None else SkipCounter()

    def _unreadable(self, exc: UnreadableImageError) -> None:
        if self.bad_image_policy == "fail":
            fix = "replace or delete the file (and its split-list line), or pass --bad_image_policy skip"
            raise UnreadableImageError(f"{exc}. To go on: {fix} (skipped images are logged and counted)") from exc
        logger.warning("skipped unreadable image (%d so far): %s", self.skipped.add(), exc)

    def _replacement(self):
        for _ in range(REPLACEMENT_TRIES):
            row = self.fallback[random.randrange(len(self.fallback))]
            try:
                return load_image(row[self.image_column]), row[self.label_column]
            except UnreadableImageError as exc:
                self._unreadable(exc)
        raise UnreadableImageError(f"{REPLACEMENT_TRIES} random replacement images in a row were unreadable too; "
                                   f"the image files look broken or missing: check the image root")

    def __call__(self, batch: dict) -> dict:
        pixel_values, labels = [], []
        for value, label in zip(batch[self.image_column], batch[self.label_column]):
            try:
                image = load_image(value)
            except UnreadableImageError as exc:
                self._unreadable(exc)
                if self.fallback is None:
                    continue
                image, label = self._replacement()
            pixel_values.append(self.transform(image))
            labels.append(label)
        return {"pixel_values": pixel_values, "labels": labels}


def undecoded(dataset, image_column: str):
    """The dataset with its ``Image`` column left encoded, so decoding happens in ``DecodeAndTransform``."""
    from datasets import Image
    features = dataset.features
    if features is not None and isinstance(features.get(image_column), Image) and features[image_column].decode:
        return dataset.cast_column(image_column, Image(decode=False))
    return dataset


def with_image_transform(dataset, transform: Callable, image_column: str = "image", label_column: str = "label",
                         bad_image_policy: str = "fail", skipped: Optional[SkipCounter] = None):
    """Attach decoding + ``transform`` to a map-style dataset lazily (``with_transform``): it runs in DataLoader
    workers, one batch of rows at a time."""
    source = undecoded(dataset, image_column)
    return source.with_transform(DecodeAndTransform(transform, image_column, label_column, bad_image_policy,
                                                    fallback=source, skipped=skipped))


def map_image_transform(dataset, transform: Callable, image_column: str = "image", label_column: str = "label",
                        bad_image_policy: str = "fail", skipped: Optional[SkipCounter] = None, batch_size: int = 64):
    """The streamed (``IterableDataset``) counterpart of ``with_image_transform``: a lazy batched ``map`` that runs
    where the stream is iterated, i.e. in the DataLoader workers. Unreadable images are dropped in 'skip' mode."""
    source = undecoded(dataset, image_column)
    columns = source.column_names or [image_column, label_column]
    return source.map(DecodeAndTransform(transform, image_column, label_column, bad_image_policy, skipped=skipped),
                      batched=True, batch_size=batch_size, remove_columns=columns)


def row_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training image's augmentation in one epoch (CPU and device pipelines alike)."""
    return (seed * 1_000_003 + epoch * 2_654_435_761 + int(index)) % (2 ** 63)


class EpochSeededAugmentation(torch.utils.data.Dataset):
    """Random augmentation as a pure function of (seed, epoch, row): the same image gets the same crop whichever
    process, worker or resumed run loads it, and the global RNG (dropout, mixup) is left untouched. This is what
    makes a run resumed mid-epoch repeat the uninterrupted one exactly. Call ``set_epoch`` before each epoch
    (workers must not persist across epochs, or they keep the old epoch)."""

    def __init__(self, dataset, seed: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed = row_seed(self.seed, self.epoch, index)
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)


def collate(examples) -> dict:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long)}
