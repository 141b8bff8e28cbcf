"""Optimisers and learning-rate schedules of the original recipes.

CNN: SGD (momentum 0.9, weight decay on every parameter) with a per-epoch cosine and no warmup (the configs'
``warmup_epoch`` was dead code). ViT: AdamW with layer-wise learning-rate decay (LLRD) as the MAE/LiVT code that
CADEL imported computes it, with a per-step linear warmup then half-cosine.

The learning rate is a pure function of (epoch, step), set by ``set_learning_rate`` before each step, so a
resumed run needs no scheduler state and process count never changes the schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch


def vit_layer_id(name: str, depth: int, exit_blocks: List[int], decay_aux_heads: bool = True) -> int:
    """LLRD layer id of a parameter of ``CadelForImageClassification`` with a ViT backbone.

    Embeddings 0, block i -> i+1, head and fc_norm -> depth+1. Aux exit j branching after block b gets id b for
    all its parameters (blocks and cosine head), which is what the original's imported ``models/util/lr_decay.py``
    did (scales 0.75^6 and 0.75^4 for exits after blocks 7 and 9 of ViT-B). ``decay_aux_heads=False`` is its
    unused duplicate ``models/lr_decay.py``: only the aux blocks are decayed, the aux heads (and norms) get id
    depth+1 like the last exit.
    """
    if name.startswith("aux_exits."):
        in_blocks = name.split(".")[2] == "blocks"
        return exit_blocks[int(name.split(".")[1])] if decay_aux_heads or in_blocks else depth + 1
    if name.startswith("backbone."):
        name = name[len("backbone."):]
        if name.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token", "norm_pre", "rel_pos_bias")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
    return depth + 1


@dataclass(frozen=True)
class OptimizerSpec:
    """What ``build_optimizer`` needs; ``from_config`` reads it from a run config."""

    name: str = "sgd"                 # sgd | adamw
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    adamw_beta2: float = 0.999
    backbone_lr: Optional[float] = None
    layer_decay: float = 0.75
    llrd_decay_aux_heads: bool = True

    @classmethod
    def from_config(cls, cfg) -> OptimizerSpec:
        return cls(name=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                   adamw_beta2=cfg.adamw_beta2, backbone_lr=cfg.backbone_lr, layer_decay=cfg.layer_decay,
                   llrd_decay_aux_heads=cfg.llrd_decay_aux_heads)


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate as a pure function of (epoch, step); ``from_config`` reads it from a run config.

    cosine_epoch: ``min + (lr-min) * (1 + cos(pi*(epoch-1)/E)) / 2``, constant within an epoch. ``E`` is the
    run's schedule (``schedule_epochs``, else ``epochs``); epochs past it keep the value of the last step of epoch E,
    so a run extended on resume never restarts or re-stretches the schedule.
    warmup_cosine: ``t = epoch + step/steps_per_epoch`` (t starts at 1, as in the original, so warmup starts at
    lr/warmup); ``lr * t / W`` while t < W, then the half-cosine from W to E.
    """

    kind: str
    lr: float
    epochs: int
    min_lr: float = 0.0
    warmup_epochs: float = 0.0

    def __post_init__(self):
        if self.kind not in ("cosine_epoch", "warmup_cosine"):
            raise ValueError(f"unknown scheduler {self.kind!r}; use cosine_epoch or warmup_cosine")

    @classmethod
    def from_config(cls, cfg) -> LRSchedule:
        return cls(cfg.scheduler, cfg.lr, cfg.schedule_epochs or cfg.epochs, cfg.min_lr, cfg.warmup_epochs)

    def at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Learning rate at 1-indexed ``epoch`` and 0-indexed ``step`` within it; past ``epochs`` (a run extended on
        resume) it holds its final value."""
        lr, lo, E = self.lr, self.min_lr, self.epochs
        if epoch > E:  # past the schedule (a run extended on resume): the value of its last step
            epoch, step = E, max(steps_per_epoch, 1) - 1
        if self.kind == "cosine_epoch":
            return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / E))
        t = epoch + step / max(steps_per_epoch, 1)
        W = self.warmup_epochs
        if t < W:
            return lr * t / W
        return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * (t - W) / max(E - W, 1e-8)))


def param_groups(model, spec: OptimizerSpec) -> List[Dict]:
    """Parameter groups with an ``lr_scale`` each; ``set_learning_rate`` multiplies it by the scheduled lr.

    Frozen parameters (``requires_grad=False``, e.g. a backbone with ``backbone_lr`` 0) are left out.
    """
    if not model.config.is_vit:  # original CNN recipe: weight decay on everything; backbone lr may differ (Places: 0)
        backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
        heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
        scale = 1.0 if spec.backbone_lr is None else (spec.backbone_lr / spec.lr if spec.lr else 0.0)
        groups = [{"params": backbone, "lr_scale": scale, "weight_decay": spec.weight_decay, "name": "backbone"},
                  {"params": heads, "lr_scale": 1.0, "weight_decay": spec.weight_decay, "name": "heads"}]
        return [g for g in groups if g["params"]]
    depth = len(model.backbone.blocks)
    groups: Dict[str, Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name.endswith(("pos_embed", "cls_token", "reg_token"))
        layer = vit_layer_id(name, depth, model.exit_indices, spec.llrd_decay_aux_heads)
        key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        group = groups.setdefault(key, {"params": [], "name": key, "lr_scale": spec.layer_decay ** (depth + 1 - layer),
                                        "weight_decay": 0.0 if no_decay else spec.weight_decay})
        group["params"].append(p)
    return list(groups.values())


def build_optimizer(model, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """SGD or AdamW, fused where the device supports it: one kernel per step, and it can skip a step on the device
    (``found_inf``) without the host reading a flag. SGD's momentum buffers start at zero rather than on the first
    step (the same numbers), so that a skipped first step leaves no uninitialised buffer behind."""
    if spec.name not in ("sgd", "adamw"):
        raise ValueError(f"unknown optimizer {spec.name!r}; use sgd or adamw")
    groups = param_groups(model, spec)
    for fused in (True, False):  # fused needs float parameters on a supported device
        try:
            if spec.name == "sgd":
                optimizer = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum,
                                            weight_decay=spec.weight_decay, fused=fused)
            else:
                optimizer = torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, spec.adamw_beta2),
                                              weight_decay=spec.weight_decay, fused=fused)
            break
        except RuntimeError:
            if not fused:
                raise
    if spec.name == "sgd" and spec.momentum:
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return optimizer


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
