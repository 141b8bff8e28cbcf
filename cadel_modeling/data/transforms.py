"""Train/eval transforms (the original's, resolution-aware), run lazily in DataLoader workers, decoding included.

Images stay undecoded in the datasets (a path or the encoded bytes per row), so a 437k-image split costs tens of MB of
memory; each worker decodes (``decoding.py``) and augments only the rows of its batch. An unreadable image either
stops the run with its path (``bad_image_policy="fail"``) or is skipped, logged and counted (``"skip"``).
"""
from __future__ import annotations

import logging
import math
import random
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageStat
from torchvision import transforms as T
from torchvision.transforms import functional as F

from .decoding import EncodedImage, UnreadableImageError, decode, decode_for_side, open_image, reduction_for

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)   # LDAM-DRW's values, used for CIFAR-10 and CIFAR-100
CIFAR_STD = (0.2023, 0.1994, 0.2010)

BAD_IMAGE_POLICIES = ("fail", "skip")
REPLACEMENT_TRIES = 20


def build_transform(train: bool, image_size: int, mean: Sequence[float], std: Sequence[float],
                    augmentation: str = "imagenet", color_jitter: float = 0.4, hflip: bool = True,
                    reduced_decode: bool = True, normalize: bool = True) -> Callable:
    """'imagenet': RandomResizedCrop + flip (+ ColorJitter) for training, Resize(size*256/224) + CenterCrop for
    evaluation. 'small' (28-32 px data): resize, pad-size/8 random crop + flip. 'none': resize only. ``hflip=False``
    drops the flips (digits, text: a mirrored image is another class or none).

    The first step decodes (an image opened by ``decoding.open_image``, or a PIL image): with ``reduced_decode`` a
    JPEG at the largest DCT reduction that still leaves the next resize at least the pixels it outputs
    (``DecodeRandomResizedCrop``, ``Decode``); without, always at full size. The last step makes the normalised
    float tensor, or with ``normalize=False`` a uint8 tensor that ``NormalizingCollate`` normalises into the batch
    (what the loaders do: one pass over each image's floats instead of two)."""
    flip = [T.RandomHorizontalFlip()] if hflip else []
    to_tensor = [ToNormalizedTensor(mean, std) if normalize else pixel_tensor]
    if augmentation == "imagenet":
        if not train:
            shorter = round(image_size * 256 / 224)
            return T.Compose([Decode(shorter if reduced_decode else None), T.Resize(shorter),
                              T.CenterCrop(image_size)] + to_tensor)
        jitter = [LutColorJitter(color_jitter, color_jitter, color_jitter, 0)] if color_jitter > 0 else []
        return T.Compose([DecodeRandomResizedCrop(image_size, reduced_decode)] + flip + jitter + to_tensor)
    resize = [Decode(image_size if reduced_decode else None), T.Resize((image_size, image_size))]
    if augmentation == "small" and train:
        return T.Compose(resize + [T.RandomCrop(image_size, padding=image_size // 8)] + flip + to_tensor)
    if augmentation in ("small", "none"):
        return T.Compose(resize + to_tensor)
    raise ValueError(f"unknown augmentation {augmentation!r}; use imagenet, small or none")


class Decode:
    """Decode to upright 8-bit RGB; a JPEG at the largest DCT reduction whose shorter side stays >= ``min_side`` (the
    shorter side the next resize makes), or at full size with ``min_side=None``."""

    def __init__(self, min_side: Optional[int] = None):
        self.min_side = min_side

    def __call__(self, image) -> PILImage.Image:
        return decode_for_side(image, self.min_side)


class DecodeRandomResizedCrop(T.RandomResizedCrop):
    """Decode + ``RandomResizedCrop`` (bilinear, antialiased) with the box chosen before decoding.

    The box is drawn exactly as torchvision draws it (same call, same random numbers, on the upright image size), so
    the crop distribution is unchanged. A JPEG is then decoded at the largest DCT reduction (1/2, 1/4, 1/8) that
    leaves the box at least the output size, and the box, mapped to the reduced image, is resized to the output in
    one step. A box under twice the output size (every box of a 500x375 image at 224 px) decodes at full size, and
    then the pixels are torchvision's. Either way a sequential JPEG stops decoding a few rows below what the resize
    reads (``decode``'s extent), which changes no pixel of the crop.
    """

    def __init__(self, size: int, reduced_decode: bool = True):
        super().__init__(size, antialias=True)
        self.reduced_decode = reduced_decode

    def forward(self, image) -> PILImage.Image:
        if not isinstance(image, EncodedImage):
            return super().forward(decode(image)[0])
        width, height = image.upright_size
        top, left, h, w = self.get_params(torch.empty((3, height, width), device="meta"), self.scale, self.ratio)
        reduction = reduction_for(w, h, max(self.size)) if self.reduced_decode else 1
        # a resize from a reduced image samples around the box, up to its filter's support (the box / output size
        # in reduced pixels, at least 1) beyond each edge: ``reach`` bounds that in full-size pixels
        reach = 0 if reduction == 1 else max(h, w) / min(self.size) + 2 * reduction
        extent = (left + w + reach, top + h + reach)
        pixels, got = decode(image, reduction, extent=extent)
        if got == 1:
            return F.resized_crop(pixels, top, left, h, w, self.size, self.interpolation, antialias=True)
        # PIL's resize rounds differently with the image's width (its pass order), so it is given the extent alone:
        # the same image whether or not the decode stopped early
        pixels = pixels.crop((0, 0, min(pixels.width, math.ceil(extent[0] / got)),
                              min(pixels.height, math.ceil(extent[1] / got))))
        box = (left / got, top / got, (left + w) / got, (top + h) / got)
        return pixels.resize((self.size[1], self.size[0]), PILImage.BILINEAR, box=box)


def pixel_tensor(image: PILImage.Image) -> torch.Tensor:
    """An RGB image as a uint8 (3, H, W) tensor: a channels-first view of one copy of its pixels."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


class ToNormalizedTensor:
    """``ToTensor`` + ``Normalize`` in two passes (x * 1/(255 std) - mean/std) instead of seven allocating ones; the
    values differ from torchvision's (x / 255 - mean) / std in the last float32 bits only. Takes an RGB image or
    its ``pixel_tensor``; ``out`` is where to write (a slice of a batch), else a new tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        self.scale = (1 / (255 * std)).float().view(-1, 1, 1)
        self.shift = (mean / std).float().view(-1, 1, 1)

    def __call__(self, image, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        pixels = image if isinstance(image, torch.Tensor) else pixel_tensor(image)
        out = torch.empty(pixels.shape, dtype=torch.float32) if out is None else out
        return torch.mul(pixels, self.scale, out=out).sub_(self.shift)   # layout, dtype and scale in one pass


class LutColorJitter(T.ColorJitter):
    """torchvision's ``ColorJitter`` on PIL images (same parameters, same random draws, the same pixels), with
    brightness and contrast as one table lookup each instead of an image-sized blend against a made-up image: both
    are per-value maps, and the table is PIL's own blend of the 256 values, so the result is bit-identical."""

    def forward(self, image: PILImage.Image) -> PILImage.Image:
        order, brightness, contrast, saturation, hue = self.get_params(self.brightness, self.contrast,
                                                                       self.saturation, self.hue)
        for index in order.tolist():
            if index == 0 and brightness is not None:
                image = look_up(image, blend_table(0, brightness))
            elif index == 1 and contrast is not None:
                mean = int(ImageStat.Stat(image.convert("L")).mean[0] + 0.5)   # as ImageEnhance.Contrast
                image = look_up(image, blend_table(mean, contrast))
            elif index == 2 and saturation is not None:
                image = F.adjust_saturation(image, saturation)
            elif index == 3 and hue is not None:
                image = F.adjust_hue(image, hue)
        return image


def look_up(image: PILImage.Image, table: list) -> PILImage.Image:
    """``image.point(table)`` for every band of an 8-bit image, by PIL's own table lookup. ``point`` itself first
    rounds each of the 768 entries in Python (a sixth of the jitter's time), which integers do not need."""
    return image._new(image.im.point(table * len(image.getbands()), None))


def blend_table(degenerate: int, factor: float) -> list:
    """``Image.blend(constant degenerate, image, factor)`` of each of the 256 values, computed by PIL itself."""
    ramp = PILImage.frombytes("L", (256, 1), bytes(range(256)))
    return list(PILImage.blend(PILImage.new("L", (256, 1), degenerate), ramp, factor).tobytes())


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
    """Batch transform: open each image, apply ``transform`` (whose first step decodes it, see ``build_transform``),
    emit ``pixel_values`` / ``labels``.

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
                return self.transform(open_image(row[self.image_column])), row[self.label_column]
            except UnreadableImageError as exc:
                self._unreadable(exc)
        raise UnreadableImageError(f"{REPLACEMENT_TRIES} random replacement images in a row were unreadable too; "
                                   f"the image files look broken or missing: check the image root")

    def __call__(self, batch: dict) -> dict:
        pixel_values, labels = [], []
        for value, label in zip(batch[self.image_column], batch[self.label_column]):
            try:
                pixels = self.transform(open_image(value))
            except UnreadableImageError as exc:
                self._unreadable(exc)
                if self.fallback is None:
                    continue
                pixels, label = self._replacement()
            pixel_values.append(pixels)
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
            # the CPU generator only: torch.manual_seed also queues a CUDA seeding with a formatted stack trace
            # (0.2 ms an image) while CUDA is not initialised, as in every DataLoader worker
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)


class NormalizingCollate:
    """The DataLoader's ``collate_fn`` for ``build_transform(..., normalize=False)``: the examples' uint8 pixels
    are normalised (``ToNormalizedTensor``) straight into the batch tensor, in shared memory in a DataLoader worker
    (as ``default_collate`` stacks), so it reaches the main process without another copy. Normalising each image
    to floats and then stacking them writes and reads every float twice more."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.normalize = ToNormalizedTensor(mean, std)

    def __call__(self, examples) -> dict:
        pixels = [e["pixel_values"] for e in examples]
        batch = float_batch((len(pixels), *pixels[0].shape))
        for image, out in zip(pixels, batch):
            self.normalize(image, out=out)
        return {"pixel_values": batch, "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long)}


def float_batch(shape: Tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor; in a DataLoader worker, in shared memory (allocated as ``default_collate``
    allocates its output there)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    elem = torch.empty(0, dtype=torch.float32)
    return elem.new(elem._typed_storage()._new_shared(math.prod(shape))).resize_(shape)
