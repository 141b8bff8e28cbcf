"""Parameters and multiply-accumulates per exit: what the cascade costs beside its plain backbone."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional

import torch

from .modeling_cadel import CadelForImageClassification


@dataclass
class PartCost:
    """Parameters and multiply-accumulates (per image) of one part of the cascade."""

    name: str
    params: int
    macs: int


def exit_costs(model: CadelForImageClassification, image_size: Optional[int] = None) -> List[PartCost]:
    """Parameters and MACs of the shared backbone, then of each exit's own layers, shallow to deep.

    MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, attention
    included; norms, activations and pooling are not counted, the usual convention; FLOPs = 2 x MACs) on a
    meta-device twin built from the model's config, so counting costs neither memory nor compute. The backbone
    row holds everything outside the exit heads (for a ViT, also the last exit's pooling LayerNorm).
    """
    from torch.utils.flop_counter import FlopCounterMode

    config = copy.deepcopy(model.config)
    config.image_size = image_size or config.image_size
    if config.image_size == model.config.image_size and next(model.parameters()).is_meta:
        twin = model  # already free to run
    else:
        with torch.device("meta"):
            twin = type(model)(config)
    was_training = twin.training
    pixels = torch.empty(1, 3, config.image_size, config.image_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        twin.eval()(pixel_values=pixels)
    twin.train(was_training)
    flops = {name.partition(".")[2] or name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    heads = [f"aux_exits.{k}" for k in range(len(twin.aux_exits))] + ["classifier"]
    head_macs = [flops.get(h, 0) // 2 for h in heads]
    if config.is_vit:
        names = [f"exit {k + 1}: {config.aux_depth} blocks after block {b}" for k, b in enumerate(twin.exit_indices)]
    else:
        names = [f"exit {k + 1}: {config.aux_head} head on feature stage {i}" for k, i in enumerate(twin.exit_indices)]
    names.append(f"exit {len(heads)}: pooled cosine classifier")
    backbone = PartCost("backbone (shared)", sum(p.numel() for p in model.backbone.parameters()),
                        flops["Global"] // 2 - sum(head_macs))
    return [backbone] + [PartCost(n, p, m) for n, p, m in zip(names, model.num_parameters_per_exit(), head_macs)]


def model_summary(model: CadelForImageClassification, image_size: Optional[int] = None) -> str:
    """A table of parameters and MACs per exit, for training (every exit) and for inference (the model's rule)."""
    c = model.config
    size = image_size or c.image_size
    parts = exit_costs(model, size)
    rule = c.resolved_inference_rule
    used = [parts[0], parts[-1]] if rule == "last" else parts
    rows = [(p.name, p.params, p.macs) for p in parts]
    rows.append(("training, all exits", sum(p.params for p in parts), sum(p.macs for p in parts)))
    rows.append((f"inference, rule {rule!r}", sum(p.params for p in used), sum(p.macs for p in used)))
    width = max(len(r[0]) for r in rows)
    lines = [f"CADEL cascade on {c.backbone} at {size}x{size}, {c.num_labels} classes "
             f"(MACs per image counted with torch.utils.flop_counter.FlopCounterMode)",
             f"  {'part':<{width}}  {'params':>10}  {'GMACs':>8}"]
    lines += [f"  {name:<{width}}  {params / 1e6:>8.2f} M  {macs / 1e9:>8.3f}" for name, params, macs in rows]
    return "\n".join(lines)
