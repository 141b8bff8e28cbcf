"""Loading pretrained weights into a CADEL model from files.

Three kinds of file are understood, in ``.pth``/``.pt``/``.bin`` (read with ``weights_only=True``) or
``.safetensors``:

* backbone checkpoints: a timm/torchvision state dict, or an MAE/LiVT pre-training checkpoint
  ``{"model": state_dict}`` (the ViT runs of the paper start from LiVT's MGP checkpoints). Classifier heads
  (``head.*``, ``fc.*``), the MAE decoder and the mask token are dropped on purpose, and a position embedding
  made for another grid is bicubically interpolated to the model's grid, prefix (class) tokens kept;
* CADEL checkpoints: a state dict of ``CadelForImageClassification`` (keys ``backbone.*``, ``aux_exits.*``,
  ``classifier.*``) or a saved model folder; every tensor whose name and shape match is loaded, so the
  backbone and aux bodies of a run on one dataset can start a run on another;
* the original CADEL's ``{"state_dict_best": {"feat_model": ...}}`` files (``module.`` prefixes stripped).

Nothing is loaded silently: ``LoadReport`` lists what was loaded, resized, dropped, skipped for a shape
mismatch, missing and unexpected.
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..run_layout import TORCH_WEIGHTS_FILE, WEIGHTS_FILE
from ..utils.errors import MissingInputError, ModelError

logger = logging.getLogger("cadel")

# Keys of pre-training checkpoints that have no place in a CADEL backbone: classifier heads and MAE's decoder.
DROPPED_PREFIXES = ("head.", "fc.", "decoder", "mask_token")
# Containers that training scripts wrap state dicts in (MAE/LiVT "model", the original CADEL "state_dict_best").
CONTAINER_KEYS = ("model", "state_dict", "model_state_dict", "state_dict_best", "feat_model")


@dataclass(frozen=True)
class ShapeMismatch:
    """A checkpoint tensor whose shape differs from the model's (not loaded): its name kept as data."""

    name: str
    checkpoint: Tuple[int, ...]
    model: Tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}: checkpoint {list(self.checkpoint)} vs model {list(self.model)}"


@dataclass
class LoadReport:
    """What a checkpoint load did. ``target`` is 'backbone' or 'model' (the whole cascade)."""

    source: str
    target: str
    loaded: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)      # "pos_embed: 14x14 -> 24x24"
    dropped: List[str] = field(default_factory=list)      # heads / decoder, removed on purpose
    shape_mismatch: List[ShapeMismatch] = field(default_factory=list)  # not loaded
    missing: List[str] = field(default_factory=list)      # model tensors the checkpoint did not provide
    unexpected: List[str] = field(default_factory=list)   # checkpoint tensors the model has no place for

    def __str__(self) -> str:
        def names(items: Sequence, limit: int = 8) -> str:
            shown = ", ".join(str(item) for item in items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        lines = [f"loaded {len(self.loaded)} tensors from {self.source} into the {self.target}"]
        for label, items in (("resized", self.resized), ("dropped (heads/decoder)", self.dropped),
                             ("shape mismatch, not loaded", self.shape_mismatch),
                             ("missing, kept as initialised", self.missing),
                             ("unexpected, ignored", self.unexpected)):
            if items:
                lines.append(f"  {label} ({len(items)}): {names(items)}")
        return "\n".join(lines)


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` dict held by a checkpoint file or a saved model folder."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / n for n in (WEIGHTS_FILE, TORCH_WEIGHTS_FILE)]
        found = [p for p in candidates if p.exists()]
        if not found:
            raise MissingInputError(f"{path} is a folder without {WEIGHTS_FILE} or {TORCH_WEIGHTS_FILE}; "
                                    f"point --pretrained_checkpoint at a checkpoint file or a saved model folder")
        path = found[0]
    if not path.exists():
        raise MissingInputError(f"pretrained checkpoint {path} does not exist; download it first (see docs/presets.md)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path), device="cpu")
    else:
        try:  # MAE/LiVT's save_model stores its argparse.Namespace next to the weights: allow that one class
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickles with custom classes are refused by weights_only: say why, not just fail
            raise ModelError(f"could not read {path} as a tensors-only checkpoint ({exc}). Re-save its state dict "
                             f"with torch.save(state_dict, path) or convert it to .safetensors") from exc
    while isinstance(state, dict):  # unwrap {"model": ...}, {"state_dict_best": {"feat_model": ...}}, ...
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        found = f"keys {list(state)[:10]}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ModelError(f"{path} holds no state dict of tensors (found {found}); expected a state dict, "
                         f"possibly wrapped under one of {CONTAINER_KEYS}")
    return {_strip_module(k): v for k, v in state.items() if torch.is_tensor(v)}


def _strip_module(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubically interpolate a ``[1, prefix + h*w, D]`` position embedding (square source grid) to ``grid``.

    The prefix (class) tokens are kept as they are, as MAE's ``interpolate_pos_embed`` does.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ModelError(f"position embedding has {patches.shape[1]} patch positions after {num_prefix_tokens} "
                         f"prefix tokens, not a square grid; cannot infer its layout")
    if (side, side) == tuple(grid):
        return pos_embed
    dim = patches.shape[-1]
    patches = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


def _pos_embed_layout(backbone: nn.Module) -> Tuple[Tuple[int, int], int]:
    """(patch grid, number of prefix tokens that carry a position embedding) of a timm ViT."""
    prefix = 0 if getattr(backbone, "no_embed_class", False) else backbone.num_prefix_tokens
    return tuple(backbone.patch_embed.grid_size), prefix


def load_state_dict_into(module: nn.Module, state: Dict[str, torch.Tensor], report: LoadReport) -> LoadReport:
    """Load every tensor of ``state`` whose name and shape match ``module`` (pos_embed resized); fill ``report``."""
    own = module.state_dict()
    accepted = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
            continue
        if name.endswith("pos_embed") and tensor.shape != own[name].shape and tensor.ndim == 3:
            owner = module.backbone if name.startswith("backbone.") else module
            grid, prefix = _pos_embed_layout(owner)
            old_side = math.isqrt(tensor.shape[1] - prefix)
            tensor = resize_pos_embed(tensor, grid, prefix)
            report.resized.append(f"{name}: {old_side}x{old_side} -> {grid[0]}x{grid[1]}")
        if tensor.shape != own[name].shape:
            report.shape_mismatch.append(ShapeMismatch(name, tuple(tensor.shape), tuple(own[name].shape)))
            continue
        accepted[name] = tensor
    module.load_state_dict(accepted, strict=False)
    report.loaded = sorted(accepted)
    mismatched = {entry.name for entry in report.shape_mismatch}  # listed once, as mismatched
    report.missing = [k for k in own if k not in accepted and k not in mismatched and
                      not k.endswith("num_batches_tracked")]
    return report


def load_pretrained_checkpoint(model: nn.Module, path) -> LoadReport:
    """Load a checkpoint file (or saved model folder) into a ``CadelForImageClassification`` and log the report.

    A CADEL state dict (``backbone.*`` keys) goes into the whole cascade; anything else into the backbone,
    after dropping classifier heads and the MAE decoder.
    """
    state = read_state_dict(path)
    if any(k.startswith("backbone.") for k in state):
        report = load_state_dict_into(model, state, LoadReport(str(path), "model"))
    else:
        report = LoadReport(str(path), "backbone")
        report.dropped = sorted(k for k in state if k.startswith(DROPPED_PREFIXES))
        kept = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}
        load_state_dict_into(model.backbone, kept, report)
    if not report.loaded:
        raise ModelError(f"no tensor of {path} matches the model ({model.config.backbone}); first checkpoint keys: "
                         f"{list(state)[:5]}, first model keys: {list(model.backbone.state_dict())[:5]}. "
                         f"Check that the checkpoint is for this backbone")
    logger.info("pretrained checkpoint: %s", report)
    return report
