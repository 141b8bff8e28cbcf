"""Decoding and augmenting training images on the accelerator (``--decode_on_gpu``), with a CPU fallback.

The DataLoader workers only read the encoded files (``EncodedImages``); the training loop decodes a whole batch at
once (``torchvision.io.decode_jpeg`` on the device: nvJPEG on CUDA) and applies the 'imagenet' recipe there:
RandomResizedCrop, flip, ColorJitter, normalisation. The random parameters of each image are drawn exactly as the
CPU pipeline draws them, from the same per-row seed (``transforms.row_seed``: seed, epoch, row) and in the same
order, so the crops, flips and colour factors are *identical* to the CPU path's and a resumed run repeats the
uninterrupted one. Pixels differ in the last bits only (the device's resize kernels are not PIL's).

Why: on a Hopper GPU a ResNet-50 trains at ~4,700 img/s while PIL decoding with RandomResizedCrop manages ~400 img/s
per CPU core, so ImageNet-LT training with light heads is input-bound unless decoding moves to the GPU.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Sequence

import torch
from PIL import Image as PILImage
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from .decoding import load_image, orientation
from .transforms import row_seed, undecoded

JPEG_MAGIC = b"\xff\xd8"
EXIF_MARKER, EXIF_SEARCH_BYTES = b"Exif\x00\x00", 65536      # the APP1 segment comes first, within 64 kB


class EncodedImages(torch.utils.data.Dataset):
    """A map-style split whose rows are the encoded image bytes, the label and the row index. The bytes stay plain
    ``bytes`` (not tensors), so accelerate's device placement leaves them on the host for the batched decoder."""

    def __init__(self, dataset, image_column: str = "image", label_column: str = "label"):
        self.dataset = undecoded(dataset, image_column)
        self.image_column, self.label_column = image_column, label_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[int(index)]
        cell = row[self.image_column]
        data = cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()
        return {"encoded": bytes(data), "labels": row[self.label_column], "row": int(index)}


def collate_encoded(examples) -> dict:
    return {"encoded": [e["encoded"] for e in examples], "rows": [e["row"] for e in examples],
            "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long)}


def turned(encoded: bytes) -> bool:
    """Whether a JPEG carries an EXIF orientation other than upright (nvJPEG ignores it: PIL decodes those)."""
    if encoded.find(EXIF_MARKER, 0, EXIF_SEARCH_BYTES) < 0:  # no copy of the header per image
        return False
    return orientation(PILImage.open(io.BytesIO(encoded))) != 1


def decode_batch(encoded: Sequence[bytes], device: torch.device) -> List[torch.Tensor]:
    """uint8 CHW RGB images, upright; JPEGs in one batched call on the device, anything else (and JPEGs turned by
    their EXIF orientation) through PIL on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg
    jpegs = [i for i, e in enumerate(encoded) if e[:2] == JPEG_MAGIC and not turned(e)]
    images: List = [None] * len(encoded)
    if jpegs:
        on = "cuda" if device.type == "cuda" else "cpu"
        data = [torch.frombuffer(bytearray(encoded[i]), dtype=torch.uint8) for i in jpegs]
        for i, img in zip(jpegs, decode_jpeg(data, mode=ImageReadMode.RGB, device=on)):
            images[i] = img.to(device)
    for i, e in enumerate(encoded):
        if images[i] is None:
            pil = load_image({"bytes": e, "path": None})     # 16-bit, CMYK, transparency, EXIF: decoding.py
            images[i] = F.pil_to_tensor(pil).to(device)
    return images


class DeviceAugment:
    """The 'imagenet' training recipe on decoded device tensors, with the CPU pipeline's random parameters."""

    def __init__(self, image_size: int, mean, std, color_jitter: float = 0.4, hflip: bool = True, seed: int = 0):
        self.image_size, self.hflip, self.seed = image_size, hflip, seed
        self.crop = T.RandomResizedCrop(image_size)
        self.jitter = T.ColorJitter(color_jitter, color_jitter, color_jitter, 0) if color_jitter > 0 else None
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def params(self, height: int, width: int, row: int, epoch: int) -> dict:
        """Crop box, flip and colour factors of one image: the same draws, in the same order, as the CPU Compose."""
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(row_seed(self.seed, epoch, row))   # the CPU pipeline's draws
            box = self.crop.get_params(torch.empty((3, height, width), device="meta"), self.crop.scale,
                                       self.crop.ratio)
            flip = bool(torch.rand(1) < 0.5) if self.hflip else False
            jitter = self.jitter.get_params(self.jitter.brightness, self.jitter.contrast, self.jitter.saturation,
                                            self.jitter.hue) if self.jitter is not None else None
        return {"box": box, "flip": flip, "jitter": jitter}

    def __call__(self, batch: dict, epoch: int, device: torch.device) -> torch.Tensor:
        images = decode_batch(batch["encoded"], device)
        out = []
        for img, row in zip(images, batch["rows"]):
            p = self.params(img.shape[-2], img.shape[-1], row, epoch)
            top, left, h, w = p["box"]
            img = F.resized_crop(img, top, left, h, w, [self.image_size, self.image_size],
                                 interpolation=InterpolationMode.BILINEAR, antialias=True)
            if p["flip"]:
                img = F.hflip(img)
            if p["jitter"] is not None:
                order, brightness, contrast, saturation, _ = p["jitter"]
                for fn in order.tolist():
                    if fn == 0 and brightness is not None:
                        img = F.adjust_brightness(img, brightness)
                    elif fn == 1 and contrast is not None:
                        img = F.adjust_contrast(img, contrast)
                    elif fn == 2 and saturation is not None:
                        img = F.adjust_saturation(img, saturation)
            out.append(img)
        x = torch.stack(out).float().div_(255)
        return (x - self.mean.to(device)) / self.std.to(device)
