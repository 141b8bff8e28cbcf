"""Post-hoc logit adjustment (the original's whole "stage 2"): ``z - tau * log(prior)``, tau chosen on validation.

The logits of each split are computed once and every tau is applied in memory; the original re-ran the network
for each tau.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from .modeling import adjust_logits, combine_exits

# The original's grids (stage-2 scripts): CNN ImageNet-LT / iNat18, Places-LT ResNet-152, and ViT.
TAU_GRIDS = {"cnn": [0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5], "places_cnn": [0.9, 1.0, 1.1, 1.2, 1.3, 1.4],
             "vit": [1.3, 1.4, 1.5, 1.6, 1.7, 1.8], "fine": [round(0.05 * i, 2) for i in range(0, 41)]}


def ensemble_scores(exit_logits: torch.Tensor, class_counts: Sequence[int], tau: float, rule: str = "last",
                    exits: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Scores of ``[K, N, C]`` exit logits combined by ``rule`` (or the 1-based ``exits``), adjusted per exit."""
    terms = len(exits) if exits is not None else (exit_logits.shape[0] if rule == "sum" else 1)
    return adjust_logits(combine_exits(list(exit_logits), rule, exits), class_counts, tau, num_terms=terms)


def tau_sweep(exit_logits: torch.Tensor, labels: torch.Tensor, class_counts: Sequence[int], grid: Sequence[float],
              rule: str = "last", exits: Optional[Sequence[int]] = None) -> List[Dict[str, float]]:
    """Top-1 for every tau of ``grid`` (in memory, no forward pass)."""
    out = []
    for tau in grid:
        pred = ensemble_scores(exit_logits, class_counts, float(tau), rule, exits).argmax(-1)
        out.append({"tau": float(tau), "top1": (pred == labels).float().mean().item()})
    return out


def pick_tau(sweep: List[Dict[str, float]]) -> float:
    """The first tau reaching the best validation top-1 (the original's strict '>' over an increasing grid)."""
    best = max(r["top1"] for r in sweep)
    return next(r["tau"] for r in sweep if r["top1"] == best)
