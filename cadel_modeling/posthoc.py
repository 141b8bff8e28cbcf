"""Post-hoc logit adjustment (the original's whole "stage 2"): ``z - tau * log(prior)``, tau chosen on validation,
exit weights for the ensemble chosen on validation the same way, and the evidence that the best weighting on
validation really beats the model's own rule (a paired bootstrap over the validation images).

The logits of each split are computed once and every tau (and every exit weighting) is applied in memory; the
original re-ran the network for each tau.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .modeling.heads import adjust_logits, combine_exits, weighted_scores
from .utils.errors import ConfigError

# The original's grids (stage-2 scripts): CNN ImageNet-LT / iNat18, Places-LT ResNet-152, and ViT.
TAU_GRIDS = {"cnn": [0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5], "places_cnn": [0.9, 1.0, 1.1, 1.2, 1.3, 1.4],
             "vit": [1.3, 1.4, 1.5, 1.6, 1.7, 1.8], "fine": [round(0.05 * i, 2) for i in range(0, 41)]}


def ensemble_scores(exit_logits: torch.Tensor, class_counts: Sequence[int], tau: float, rule: str = "last",
                    exits: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Scores of ``[K, N, C]`` exit logits combined by ``rule`` (or the 1-based ``exits``), adjusted per exit."""
    terms = len(exits) if exits is not None else (exit_logits.shape[0] if rule == "sum" else 1)
    return adjust_logits(combine_exits(list(exit_logits), rule, exits), class_counts, tau, num_terms=terms)


def selected_exits(num_exits: int, rule: str, exits: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """The 1-based exits a rule (or an explicit ``exits`` list) sums: 'last' = (K,), 'sum' = (1, .., K)."""
    if exits:
        check_exit_numbers(num_exits, exits)
        return tuple(exits)
    return (num_exits,) if rule == "last" else tuple(range(1, num_exits + 1))


def check_exit_numbers(num_exits: int, exits: Sequence[int]) -> None:
    """``--eval_exits`` must name distinct exits of the model (1-based)."""
    bad = [k for k in exits if not (isinstance(k, int) and 1 <= k <= num_exits)]
    if bad or len(set(exits)) != len(exits):
        raise ConfigError(f"eval_exits {list(exits)} must be distinct exit numbers in 1..{num_exits} "
                          f"(1 = shallowest, {num_exits} = the backbone's own exit)")


def selection_name(selection: Tuple[int, ...], num_exits: int) -> str:
    if selection == (num_exits,):
        return "last exit (CNN rule)"
    if selection == tuple(range(1, num_exits + 1)):
        return "sum of exits (ViT rule)"
    if len(selection) == 1:
        return f"exit {selection[0]} alone"
    return f"exits {'+'.join(map(str, selection))}"


def tau_sweep(exit_logits: torch.Tensor, labels: torch.Tensor, class_counts: Sequence[int], grid: Sequence[float],
              rule: str, exits: Optional[Sequence[int]] = None) -> List[Dict[str, float]]:
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


# ------------------------------------------------------------------------------------------------ exit weights
def simplex_grid(num_exits: int, step: float) -> List[Tuple[float, ...]]:
    """Every weighting with weights in ``{0, step, 2*step, .., 1}`` summing to 1 (66 points for 3 exits, step 0.1)."""
    if not step > 0 or abs(round(1 / step) * step - 1) > 1e-9:
        raise ConfigError(f"exit weight grid step {step} must be 1/m for a whole m (0.1, 0.125, 0.25, ..)")
    parts = round(1 / step)
    return [tuple(i / parts for i in combo) for combo in itertools.product(range(parts + 1), repeat=num_exits)
            if sum(combo) == parts]


def rule_weightings(num_exits: int, rule: str) -> List[Tuple[str, Tuple[float, ...]]]:
    """The two rules as named exit weightings, the model's own rule first."""
    rules = {"last": ("last exit (CNN rule)", (0.0,) * (num_exits - 1) + (1.0,)),
             "sum": ("sum of exits (ViT rule)", (1.0,) * num_exits)}
    return [rules[rule]] + [v for k, v in rules.items() if k != rule]


def exit_weight_candidates(num_exits: int, step: float, rule: str) -> List[Tuple[str, Tuple[float, ...]]]:
    """Named weightings, searched in this order: the model's own rule, the other rule, then the simplex grid."""
    return rule_weightings(num_exits, rule) + [("grid", w) for w in simplex_grid(num_exits, step)]


def search_exit_weights(exit_logits: torch.Tensor, labels: torch.Tensor, class_counts: Sequence[int],
                        tau_grid: Sequence[float], step: float, rule: str) -> dict:
    """Exit weights and tau with the best top-1 on (validation) logits; the first maximum in candidate order wins,
    so a tie keeps the model's rule. Returns the choice, the rules' own best top-1 and the candidate count."""
    labels = labels.to(exit_logits.device)
    best, rules_top1 = None, {}
    candidates = exit_weight_candidates(exit_logits.shape[0], step, rule)
    for name, weights in candidates:
        for tau in tau_grid:
            scores = weighted_scores(exit_logits, weights, class_counts, float(tau))
            top1 = (scores.argmax(-1) == labels).float().mean().item()
            if name != "grid":
                rules_top1[name] = max(rules_top1.get(name, top1), top1)
            if best is None or top1 > best["val_top1"]:
                best = {"weights": list(weights), "tau": float(tau), "val_top1": top1, "source": name}
    total = sum(best["weights"])
    best["normalized_weights"] = [w / total for w in best["weights"]]
    return {**best, "rules_val_top1": rules_top1, "grid_step": step, "tau_grid": [float(t) for t in tau_grid],
            "num_candidates": len(candidates) * len(tau_grid)}


# ------------------------------------------------------------------------------------------------ rule choice
BOOTSTRAP_SEED = 0  # fixed, so that the same validation logits always give the same decision


def paired_bootstrap_ahead(candidate_correct, baseline_correct, resamples: int, seed: int = BOOTSTRAP_SEED) -> float:
    """The fraction of ``resamples`` bootstrap resamples of the images (n of the n drawn with replacement, one draw
    shared by both) in which the candidate gets strictly more images right than the baseline."""
    diff = np.asarray(candidate_correct, dtype=np.int64) - np.asarray(baseline_correct, dtype=np.int64)
    n = len(diff)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2 ** 22 // n)  # bounded memory; numpy draws the same numbers whatever the chunk size
    ahead = 0
    for start in range(0, resamples, chunk):
        draw = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        ahead += int((diff[draw].sum(axis=1) > 0).sum())
    return ahead / resamples


def rule_change_evidence(exit_logits: torch.Tensor, labels: torch.Tensor, class_counts: Sequence[int],
                         ensemble: dict, rule: str, tau: float, resamples: int, confidence: float) -> dict:
    """Does the best weighting on validation (``ensemble``, from ``search_exit_weights``) beat the model's own
    rule at its ``tau`` by more than the luck of which images are in the split? Both score the same images; the
    candidate is ``strong`` when it is ahead on the split and in at least ``confidence`` of ``resamples`` paired
    bootstrap resamples. It was picked as the best of many on these very images, so the test is, if anything,
    lenient: hence a high threshold (0.95 by default)."""
    labels = labels.to(exit_logits.device)
    own_name, own_weights = rule_weightings(exit_logits.shape[0], rule)[0]
    own = weighted_scores(exit_logits, own_weights, class_counts, float(tau)).argmax(-1) == labels
    best = weighted_scores(exit_logits, ensemble["weights"], class_counts, ensemble["tau"]).argmax(-1) == labels
    n, own_right, best_right = len(labels), int(own.sum()), int(best.sum())
    ahead = paired_bootstrap_ahead(best.cpu().numpy(), own.cpu().numpy(), resamples)
    return {"candidate": ensemble["source"], "candidate_weights": list(ensemble["weights"]),
            "candidate_tau": ensemble["tau"], "candidate_val_top1": best_right / n, "model_rule": own_name,
            "model_rule_tau": float(tau), "model_rule_val_top1": own_right / n, "gain": (best_right - own_right) / n,
            "fraction_ahead": ahead, "resamples": resamples, "seed": BOOTSTRAP_SEED, "val_size": n,
            "threshold": confidence, "strong": best_right > own_right and ahead >= confidence}


def rule_evidence_text(evidence: dict) -> str:
    """One sentence: the best weighting on val against the model's rule, and whether the evidence is strong."""
    weights = "/".join(f"{w / sum(evidence['candidate_weights']):.2f}" for w in evidence["candidate_weights"])
    best = f"learned exit weights {weights}" if evidence["candidate"] == "grid" else evidence["candidate"]
    return (f"the best on val ({best} at tau = {evidence['candidate_tau']:g}) scored {100 * evidence['gain']:+.2f} "
            f"points over the model's {evidence['model_rule']} at tau = {evidence['model_rule_tau']:g} on "
            f"{evidence['val_size']} val images and was ahead in {100 * evidence['fraction_ahead']:.1f}% of "
            f"{evidence['resamples']} paired bootstrap resamples ({100 * evidence['threshold']:g}% needed): "
            f"{'strong' if evidence['strong'] else 'too weak'} evidence")
