"""Evaluate a CADEL model on a split: overall / many / medium / few accuracy, top-5, per-class accuracy, macro-F1,
ECE and NLL for the model's inference rule (or chosen exits) before and after logit adjustment, for the other rule,
each exit alone and the learned exit weights of stage 2; JSON, CSV and a plot. Optionally the test-agnostic
protocol (forward / backward long-tailed test distributions).

The network runs once over the split; every variant is computed from the gathered exit logits in memory, and the
metrics only on the main process (the others return ``{}``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from .data import LongTailedData, build_datasets
from .data.loaders import build_eval_loader
from .hub import find_model_dir
from .metrics import (
    compute_long_tail_metrics,
    format_table,
    plot_per_class_accuracy,
    write_per_class_csv,
)
from .modeling import CadelForImageClassification
from .posthoc import ensemble_scores, weighted_scores
from .training import make_accelerator, predict, write_json

logger = logging.getLogger("cadel")

ENSEMBLE_FILE = "ensemble.json"  # learned exit weights and their tau, written by stage 2 next to the weights
TEST_AGNOSTIC_RATIOS = (50, 25, 10, 5, 2)  # SADE's imbalance ratios of the shifted test distributions


def load_model(model_dir) -> CadelForImageClassification:
    return CadelForImageClassification.from_pretrained(str(model_dir)).eval()


def load_ensemble(model_dir) -> Optional[dict]:
    """The learned exit weights saved by stage 2 in a model folder, or None."""
    path = Path(model_dir) / ENSEMBLE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_model_matches_data(model: CadelForImageClassification, data: LongTailedData, where: str) -> None:
    """A model trained on other data would give silently wrong numbers: compare classes and training counts."""
    cfg = model.config
    if cfg.num_labels != data.num_classes:
        raise ValueError(f"{where} was trained for {cfg.num_labels} classes but the dataset has {data.num_classes}; "
                         f"evaluate it on the dataset it was trained on (--dataset/--data_dir)")
    if cfg.class_counts is not None and list(cfg.class_counts) != list(data.class_counts):
        diff = next(i for i, (a, b) in enumerate(zip(cfg.class_counts, data.class_counts)) if a != b)
        raise ValueError(f"{where} was trained with other per-class counts than this dataset's training split "
                         f"(class {diff}: {cfg.class_counts[diff]} vs {data.class_counts[diff]}); a different "
                         f"dataset, imbalance factor or seed? Use the settings of its run_config.yaml")


def process_invariant_loader(cfg, data: LongTailedData, split: str, num_processes: int) -> Tuple[DataLoader, int]:
    """An evaluation loader whose every forward pass holds ``eval_batch_size`` images on each process, and the
    split's true size; keep that many gathered rows.

    Convolution and matrix kernels pick their algorithm by input shape, so an image's logits can change in the
    last bits with the batch size (not with the other images of the batch). With a per-process batch that does not
    depend on the process count, and the split padded with its own first images to whole rounds of
    ``eval_batch_size x num_processes``, every image is computed in a batch of the same shape: the gathered
    outputs, and every number made from them, are bitwise those of one process.
    """
    if split not in data.splits:
        raise ValueError(f"split {split!r} does not exist for {cfg.dataset}; available: {sorted(data.splits)}")
    dataset = data.splits[split]
    size = len(dataset)
    per_round = cfg.eval_batch_size * num_processes
    padding = -size % per_round
    padded = dataset.select(list(range(size)) + [i % size for i in range(padding)]) if padding else dataset
    return build_eval_loader(cfg, dataclasses.replace(data, splits={split: padded}), split, 1), size


def predict_split(model, loader, accelerator, size: int, desc: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``predict`` over a :func:`process_invariant_loader`: exit logits ``[K, size, C]`` and labels, padding dropped."""
    exit_logits, labels = predict(model, loader, accelerator, desc=desc)
    return exit_logits[:, :size], labels[:size]


def selected_exits(num_exits: int, rule: str, exits: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """The 1-based exits a rule (or an explicit ``exits`` list) sums: 'last' = (K,), 'sum' = (1, .., K)."""
    if exits:
        bad = [k for k in exits if not (isinstance(k, int) and 1 <= k <= num_exits)]
        if bad or len(set(exits)) != len(exits):
            raise ValueError(f"eval_exits {list(exits)} must be distinct exit numbers in 1..{num_exits} "
                             f"(1 = shallowest, {num_exits} = the backbone's own exit)")
        return tuple(exits)
    return (num_exits,) if rule == "last" else tuple(range(1, num_exits + 1))


def selection_name(selection: Tuple[int, ...], num_exits: int) -> str:
    if selection == (num_exits,):
        return "last exit (CNN rule)"
    if selection == tuple(range(1, num_exits + 1)):
        return "sum of exits (ViT rule)"
    if len(selection) == 1:
        return f"exit {selection[0]} alone"
    return f"exits {'+'.join(map(str, selection))}"


def score_variants(exit_logits: torch.Tensor, model_cfg, tau: float, exits: Optional[Sequence[int]] = None,
                   ensemble: Optional[dict] = None) -> Dict[str, torch.Tensor]:
    """Named score sets, the main one first: the inference rule (or ``exits``) raw and tau-adjusted, then at tau
    the ViT rule, the learned exit weights (their own tau) and each exit alone, where different from the main."""
    num_exits = exit_logits.shape[0]
    counts = model_cfg.class_counts
    main = selected_exits(num_exits, model_cfg.resolved_inference_rule, exits)
    label = selection_name(main, num_exits)
    variants = {f"{label}, tau=0": ensemble_scores(exit_logits, counts, 0.0, exits=main)}
    if tau:
        variants = {f"{label}, tau={tau:g}": ensemble_scores(exit_logits, counts, tau, exits=main), **variants}
    others = [tuple(range(1, num_exits + 1))] + [(k,) for k in range(1, num_exits + 1)]
    if ensemble:
        weights = "/".join(f"{w:.2f}" for w in ensemble["normalized_weights"])
        variants[f"learned exit weights {weights}, tau={ensemble['tau']:g}"] = weighted_scores(
            exit_logits, ensemble["weights"], counts, ensemble["tau"])
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
        raise ValueError(f"the test-agnostic protocol needs every class in the split; class {int(per_class.argmin())} "
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


def _without_per_class(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "per_class_accuracy"}


def report(exit_logits, labels, model_cfg, data: LongTailedData, tau: float, out_dir: Path, split: str,
           exits=None, ensemble: Optional[dict] = None, is_main: bool = True, test_agnostic: bool = False,
           provenance: Optional[dict] = None) -> Dict[str, dict]:
    """Metrics of every variant, written with the main one's per-class CSV and plot (``provenance``, e.g. the
    command, goes into results.json as is). Main process only: the others return ``{}`` at once (every process
    holds the same gathered logits, so one computation suffices)."""
    if not is_main:
        return {}
    variants = score_variants(exit_logits, model_cfg, tau, exits, ensemble)
    results = {name: compute_long_tail_metrics(scores, labels, data.class_counts) for name, scores in variants.items()}
    main_name = next(iter(results))
    main = results[main_name]
    record = {"split": split, "tau": tau, "main": main_name, "num_exits": exit_logits.shape[0],
              "exits": list(selected_exits(exit_logits.shape[0], model_cfg.resolved_inference_rule, exits)),
              "ensemble": ensemble, "results": results}
    if test_agnostic:
        scores = variants[main_name]
        record["test_agnostic"] = {
            name: _without_per_class(compute_long_tail_metrics(scores[idx], labels[idx], data.class_counts))
            for name, idx in shifted_test_subsets(labels, data.class_counts).items()}
    record.update(provenance or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", record)
    write_per_class_csv(out_dir / "per_class.csv", main["per_class_accuracy"], data.class_counts, data.class_names)
    plot_per_class_accuracy(out_dir / "per_class_accuracy.png", main["per_class_accuracy"], data.class_counts,
                            title=f"{model_cfg.backbone} CADEL, {split} split, {main_name}",
                            class_names=data.class_names)
    if test_agnostic:
        results = {**results, **{f"test-agnostic {name}": m for name, m in record["test_agnostic"].items()}}
    return results


def run(cfg) -> Dict[str, dict]:
    from .stage1 import setup_logging
    accelerator = make_accelerator()
    setup_logging(accelerator)
    with accelerator.main_process_first():  # one Hub download and one dataset build; the others read the cache
        model_dir = find_model_dir(cfg.eval_model)
        data = build_datasets(cfg)
    model = load_model(model_dir)
    check_model_matches_data(model, data, str(model_dir))
    selected_exits(len(model.aux_exits) + 1, model.config.resolved_inference_rule, cfg.eval_exits)  # fail early
    ensemble = load_ensemble(model_dir)
    loader, size = process_invariant_loader(cfg, data, cfg.eval_split, accelerator.num_processes)
    model, loader = accelerator.prepare(model, loader)
    exit_logits, labels = predict_split(model, loader, accelerator, size, cfg.eval_split)
    net = accelerator.unwrap_model(model)
    local = Path(cfg.eval_model).is_dir()
    out_dir = (Path(model_dir) if local else Path(cfg.output_dir)) / f"eval_{cfg.eval_split}"
    test_agnostic = cfg.eval_test_agnostic
    results = report(exit_logits, labels, net.config, data, net.config.tau, out_dir, cfg.eval_split, cfg.eval_exits,
                     ensemble, accelerator.is_main_process, test_agnostic,
                     provenance={"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                                 "num_processes": accelerator.num_processes})
    if accelerator.is_main_process:
        print(f"\n{model_dir} on {cfg.dataset} {cfg.eval_split} ({len(labels)} images)")
        print(format_table(results))
        print(f"\nresults: {out_dir / 'results.json'}, per-class: {out_dir / 'per_class.csv'}, "
              f"plot: {out_dir / 'per_class_accuracy.png'}")
        if cfg.push_to_hub:  # a Hub model's results live in output_dir, outside the read-only cache
            from .hub import push_to_hub
            extra = {} if local else {"eval_dirs": [out_dir], "card_path": Path(cfg.output_dir) / "README.md"}
            push_to_hub(model_dir, cfg.hub_model_id or (None if local else cfg.eval_model), private=cfg.hub_private,
                        **extra)
    accelerator.wait_for_everyone()
    return results
