"""What an evaluation of a split writes: the metrics of every score variant (the model's rule before and after logit
adjustment, the other rule, each exit alone, the learned exit weights), ``results.json``, the main variant's
per-class CSV and plot, and optionally SADE's test-agnostic protocol.

Only the main process computes (every process holds the same gathered logits); the others return ``{}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from .metrics import compute_long_tail_metrics, plot_per_class_accuracy, write_per_class_csv
from .modeling.heads import weighted_scores
from .posthoc import ensemble_scores, selected_exits, selection_name
from .run_layout import ALL_RESULTS_FILE, PER_CLASS_CSV, PER_CLASS_PLOT, RESULTS_FILE
from .utils.errors import DataError
from .utils.io import write_json

TEST_AGNOSTIC_RATIOS = (50, 25, 10, 5, 2)  # SADE's imbalance ratios of the shifted test distributions


def _weights_label(weights: Sequence[float]) -> str:
    total = sum(weights)
    return "/".join(f"{w / total:.2f}" for w in weights)


def score_variants(exit_logits: torch.Tensor, model_config, exits: Optional[Sequence[int]] = None,
                   ensemble: Optional[dict] = None) -> Dict[str, torch.Tensor]:
    """Named score sets, the main one first: the model's rule (or ``exits``) with its tau and raw, then at that tau
    the other rules, the learned exit weights (their own tau) and each exit alone, where different from the main."""
    num_exits = exit_logits.shape[0]
    counts, tau = model_config.class_counts, model_config.tau
    rule = model_config.resolved_inference_rule
    variants: Dict[str, torch.Tensor] = {}
    if rule == "weighted" and not exits:
        weights = model_config.exit_weights
        label, main = f"learned exit weights {_weights_label(weights)} (the model's rule)", None
        if tau:
            variants[f"{label}, tau={tau:g}"] = weighted_scores(exit_logits, weights, counts, tau)
        variants[f"{label}, tau=0"] = weighted_scores(exit_logits, weights, counts, 0.0)
    else:
        main = selected_exits(num_exits, rule, exits)
        label = selection_name(main, num_exits)
        if tau:
            variants[f"{label}, tau={tau:g}"] = ensemble_scores(exit_logits, counts, tau, exits=main)
        variants[f"{label}, tau=0"] = ensemble_scores(exit_logits, counts, 0.0, exits=main)
    if ensemble and rule != "weighted":
        variants[f"learned exit weights {_weights_label(ensemble['weights'])}, tau={ensemble['tau']:g}"] = \
            weighted_scores(exit_logits, ensemble["weights"], counts, ensemble["tau"])
    others = [tuple(range(1, num_exits + 1))] + [(k,) for k in range(1, num_exits + 1)]
    for selection in dict.fromkeys(others):
        if selection != main:
            variants[f"{selection_name(selection, num_exits)}, tau={tau:g}"] = ensemble_scores(
                exit_logits, counts, tau, exits=selection)
    return variants


def shifted_test_subsets(labels: torch.Tensor, class_counts: Sequence[int],
                         ratios: Sequence[float] = TEST_AGNOSTIC_RATIOS, seed: int = 0) -> Dict[str, torch.Tensor]:
    """SADE's test-agnostic protocol: subsets of a balanced split whose class sizes follow an exponential profile.

    'forward_r' keeps ``floor(n * r ** (-rank / (C - 1)))`` images of the class of training-frequency rank ``rank``
    (0 = most frequent; at least 1), so the test set is long-tailed like the training set with imbalance ``r``;
    'backward_r' reverses the ranks; 'uniform' is the whole split. ``n`` is the smallest class size of the split.
    Each class keeps the first images of one seeded shuffle, so the subsets are nested. Returns sorted indices.
    """
    labels = torch.as_tensor(labels)
    num_classes = len(class_counts)
    per_class = torch.bincount(labels, minlength=num_classes)
    n = int(per_class.min())
    if n == 0:
        raise DataError(f"the test-agnostic protocol needs every class in the split; class {int(per_class.argmin())} "
                        f"has no image. Use a balanced split (test) or turn the protocol off")
    rank = torch.empty(num_classes, dtype=torch.float64)
    rank[torch.argsort(-torch.as_tensor(class_counts), stable=True)] = torch.arange(num_classes, dtype=torch.float64)
    shuffled = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    by_class = shuffled[torch.argsort(labels[shuffled], stable=True)]  # each class's images in shuffled order
    offsets = torch.cumsum(per_class, 0) - per_class
    position = torch.arange(len(labels)) - offsets[labels[by_class]]
    span = max(num_classes - 1, 1)
    subsets = {}
    for direction, exponent in (("forward", rank / span), ("backward", (num_classes - 1 - rank) / span)):
        for ratio in sorted(ratios, reverse=direction == "forward"):
            keep = torch.clamp(torch.floor(n * float(ratio) ** -exponent), min=1).long()
            subsets[f"{direction}_{ratio:g}"] = torch.sort(by_class[position < keep[labels[by_class]]]).values
        if direction == "forward":
            subsets["uniform"] = torch.arange(len(labels))
    return subsets


FLAT_KEYS = {"top1": "accuracy", "top5": "top5_accuracy", "many": "many_accuracy", "medium": "medium_accuracy",
             "few": "few_accuracy", "ece": "ece", "nll": "nll", "macro_f1": "macro_f1"}


def flat_results(main: dict, tau: float, num_samples: int) -> dict:
    """The main variant's metrics as the HF examples' flat ``eval_*`` keys (fractions; NLL in nats)."""
    flat = {f"eval_{name}": main.get(key) for name, key in FLAT_KEYS.items()}
    return {**flat, "eval_tau": tau, "eval_samples": num_samples}


def _without_per_class(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "per_class_accuracy"}


def write_report(exit_logits, labels, model_config, data, out_dir: Path, split: str, *, exits=None,
                 ensemble: Optional[dict] = None, is_main: bool = True, test_agnostic: bool = False,
                 provenance: Optional[dict] = None) -> Dict[str, dict]:
    """Metrics of every variant, written with the main one's per-class CSV and plot (``provenance``, e.g. the
    command, goes into results.json as is). Returns {variant: metrics} on the main process, {} elsewhere."""
    if not is_main:
        return {}
    variants = score_variants(exit_logits, model_config, exits, ensemble)
    results = {name: compute_long_tail_metrics(scores, labels, data.class_counts) for name, scores in variants.items()}
    main_name = next(iter(results))
    main = results[main_name]
    rule = model_config.resolved_inference_rule
    record = {"split": split, "tau": model_config.tau, "main": main_name, "num_exits": exit_logits.shape[0],
              "inference_rule": rule, "exit_weights": model_config.exit_weights if rule == "weighted" else None,
              "exits": list(selected_exits(exit_logits.shape[0], "sum" if rule == "weighted" else rule, exits)),
              "ensemble": ensemble, "results": results}
    if test_agnostic:
        scores = variants[main_name]
        record["test_agnostic"] = {
            name: _without_per_class(compute_long_tail_metrics(scores[idx], labels[idx], data.class_counts))
            for name, idx in shifted_test_subsets(labels, data.class_counts).items()}
    record.update(provenance or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULTS_FILE, record)
    write_json(out_dir / ALL_RESULTS_FILE, flat_results(main, model_config.tau, len(labels)))
    write_per_class_csv(out_dir / PER_CLASS_CSV, main["per_class_accuracy"], data.class_counts, data.class_names)
    plot_per_class_accuracy(out_dir / PER_CLASS_PLOT, main["per_class_accuracy"], data.class_counts,
                            title=f"{model_config.backbone} CADEL, {split} split, {main_name}",
                            class_names=data.class_names)
    if test_agnostic:
        results = {**results, **{f"test-agnostic {name}": m for name, m in record["test_agnostic"].items()}}
    return results
