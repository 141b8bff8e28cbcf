"""The numbers the CADEL authors report (top-1 %, from the original repository's README), looked up by dataset and
timm backbone. Used by ``--list_presets``, docs/presets.md and the model card's comparison line."""
from __future__ import annotations

from typing import Dict, Optional

METRICS = ("many_accuracy", "medium_accuracy", "few_accuracy", "accuracy")
# (dataset, model) -> many / medium / few / all; None where the README gives no split.
PAPER_RESULTS: Dict[tuple, Dict[str, Optional[float]]] = {
    (dataset, model): dict(zip(METRICS, numbers, strict=True))
    for dataset, model, numbers in [
        ("ImageNet-LT", "ResNet-50", (67.5, 55.6, 43.2, 58.5)),
        ("ImageNet-LT", "ResNeXt-50", (68.8, 55.8, 44.0, 59.2)),
        ("iNat18", "ResNet-50", (None, None, None, 73.5)),
        ("Places-LT", "ResNet-152", (None, None, None, 41.4)),
        ("ImageNet-LT", "ViT-B/16 224", (70.3, 59.8, 47.5, 61.7)),
        ("ImageNet-LT", "ViT-B/16 384", (73.0, 62.2, 50.3, 64.7)),
        ("iNat18", "ViT-B/16 224", (77.7, 76.3, 75.1, 76.2)),
        ("iNat18", "ViT-B/16 384", (75.0, 81.8, 85.4, 82.7)),
        ("Places-LT", "ViT-B/16 224", (46.6, 46.7, 46.5, 46.6)),
        ("Places-LT", "ViT-B/16 384", (47.9, 50.2, 38.5, 47.1)),
    ]
}
DATASET_NAMES = {"imagenet_lt": "ImageNet-LT", "inat18": "iNat18", "places_lt": "Places-LT"}
_BACKBONES = {"resnet50": "ResNet-50", "resnext50_32x4d": "ResNeXt-50", "resnet152": "ResNet-152"}


def paper_model_name(backbone: str, image_size: int) -> Optional[str]:
    arch = backbone.split(".")[0]
    return f"ViT-B/16 {image_size}" if arch.startswith("vit_base_patch16") else _BACKBONES.get(arch)


def paper_result(dataset: str, backbone: str, image_size: int) -> Optional[Dict[str, Optional[float]]]:
    """The README's numbers (%) for this dataset builder and timm backbone, or None when it reports none."""
    return PAPER_RESULTS.get((DATASET_NAMES.get(dataset), paper_model_name(backbone, image_size)))
