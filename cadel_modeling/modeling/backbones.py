"""The one rule that says how a timm backbone becomes a cascade: which *family* it belongs to.

The family decides where the auxiliary exits branch off, which loss ``base_loss: auto`` picks and which inference
rule ``inference_rule: auto`` means, so config, loss choice, model building, the Hub card and the benchmarks all ask
here. It is read from timm's own registry (the module that defines the model), never from substrings of the name:
"vit" also occurs in ``fastvit``, ``mobilevit``, ``levit`` and ``maxvit``, which are not plain ViTs.

- ``vit``: plain token transformers (timm's ``vision_transformer``, ``vision_transformer_hybrid``, ``deit``,
  ``eva``, ``beit``): exits after transformer blocks, read through timm's ``forward_intermediates``.
- ``cnn``: everything that timm builds with ``features_only=True`` (ResNets, ResNeXts, ConvNeXts, and hierarchical
  hybrids such as fastvit, mobilevit, levit, maxvit or swin): exits on feature stages.

This file is part of the remote code saved with every model: it imports only timm.
"""
from __future__ import annotations

from timm.models import get_arch_name, is_model, is_model_in_modules

VIT_MODULES = ("vision_transformer", "vision_transformer_hybrid", "deit", "eva", "beit")
FAMILIES = ("cnn", "vit")


class UnsupportedBackboneError(ValueError):
    """A timm model name cadel cannot turn into a cascade."""

    exit_code = 2  # bad input for the commands (this file ships as remote code, so it cannot import utils.errors)


def backbone_family(name: str) -> str:
    """'vit' for timm's plain ViTs, 'cnn' for every other registered timm model; an unknown name is an error."""
    arch = get_arch_name(name)
    if not is_model(arch):
        raise UnsupportedBackboneError(
            f"{name!r} is not a timm model name; list them with timm.list_models('*resnet*') (for example "
            f"resnet50, resnext50_32x4d, vit_base_patch16_224)")
    return "vit" if is_model_in_modules(arch, VIT_MODULES) else "cnn"


def default_inference_rule(family: str) -> str:
    """The original's rules: CNNs predict with the last exit, ViTs with the sum of the exits."""
    return "sum" if family == "vit" else "last"


def default_base_loss(family: str) -> str:
    """The original's per-exit losses: softmax CE for CNNs, one-hot BCE summed over classes for ViTs."""
    return "bce" if family == "vit" else "ce"
