"""Train/eval transforms (the original's, resolution-aware) applied lazily with ``Dataset.with_transform``."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)


def build_transform(train: bool, image_size: int, mean: Sequence[float], std: Sequence[float],
                    augmentation: str = "imagenet", color_jitter: float = 0.4) -> Callable:
    """'imagenet': RandomResizedCrop + flip (+ ColorJitter) for training, Resize(size*256/224) + CenterCrop for
    evaluation. 'small' (28-32 px data): resize, pad-4 random crop + flip. 'none': resize only."""
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    rgb = T.Lambda(lambda im: im.convert("RGB"))
    if augmentation == "imagenet":
        if not train:
            return T.Compose([rgb, T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)] + to_tensor)
        jitter = [T.ColorJitter(color_jitter, color_jitter, color_jitter, 0)] if color_jitter > 0 else []
        return T.Compose([rgb, T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] + jitter + to_tensor)
    resize = [rgb, T.Resize((image_size, image_size))]
    if augmentation == "small" and train:
        return T.Compose(resize + [T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()] + to_tensor)
    if augmentation in ("small", "none"):
        return T.Compose(resize + to_tensor)
    raise ValueError(f"unknown augmentation {augmentation!r}; use imagenet, small or none")


def with_image_transform(dataset, transform: Callable, image_column: str = "image", label_column: str = "label"):
    """Attach ``transform`` lazily so decoding and augmentation run in DataLoader workers, batch by batch."""

    def apply(batch):
        return {"pixel_values": [transform(im) for im in batch[image_column]], "labels": batch[label_column]}

    return dataset.with_transform(apply)


def collate(examples) -> dict:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long)}
