"""Evaluate a CADEL model on a split: overall / many / medium / few accuracy, per-class accuracy, calibration,
for the model's inference rule and for each exit, before and after logit adjustment; JSON, CSV and a plot."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from accelerate import Accelerator

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
from .posthoc import ensemble_scores
from .training import predict, write_json

logger = logging.getLogger("cadel")


def load_model(model_dir) -> CadelForImageClassification:
    return CadelForImageClassification.from_pretrained(str(model_dir)).eval()


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


def score_variants(exit_logits: torch.Tensor, model_cfg, tau: float,
                   exits: Optional[Sequence[int]] = None) -> Dict[str, torch.Tensor]:
    """Named score sets: the inference rule (or chosen exits) raw and tau-adjusted, and each exit alone."""
    rule = model_cfg.resolved_inference_rule
    label = f"exits {'+'.join(map(str, exits))}" if exits else f"{rule} rule"
    counts = model_cfg.class_counts
    variants = {f"{label}, tau=0": ensemble_scores(exit_logits, counts, 0.0, rule, exits)}
    if tau:
        variants[f"{label}, tau={tau:g}"] = ensemble_scores(exit_logits, counts, tau, rule, exits)
    for k in range(exit_logits.shape[0]):
        variants[f"exit {k + 1} alone, tau={tau:g}"] = ensemble_scores(exit_logits, counts, tau, exits=[k + 1])
    return variants


def report(exit_logits, labels, model_cfg, data: LongTailedData, tau: float, out_dir: Path, split: str,
           exits=None, is_main: bool = True) -> Dict[str, dict]:
    """Compute every variant's metrics; the main one also gets the per-class CSV and plot."""
    results = {name: compute_long_tail_metrics(scores, labels, data.class_counts)
               for name, scores in score_variants(exit_logits, model_cfg, tau, exits).items()}
    if is_main:
        main_name = list(results)[1 if tau else 0]
        main = results[main_name]
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "results.json", {"split": split, "tau": tau, "main": main_name, "results": results})
        write_per_class_csv(out_dir / "per_class.csv", main["per_class_accuracy"], data.class_counts, data.class_names)
        plot_per_class_accuracy(out_dir / "per_class_accuracy.png", main["per_class_accuracy"], data.class_counts,
                                title=f"{model_cfg.backbone} CADEL, {split} split, {main_name}",
                                class_names=data.class_names)
    return results


def run(cfg) -> Dict[str, dict]:
    from .stage1 import setup_logging
    accelerator = Accelerator()
    setup_logging(accelerator)
    model_dir = find_model_dir(cfg.eval_model)
    with accelerator.main_process_first():
        data = build_datasets(cfg)
    model = load_model(model_dir)
    check_model_matches_data(model, data, str(model_dir))
    loader = build_eval_loader(cfg, data, cfg.eval_split, accelerator.num_processes)
    model, loader = accelerator.prepare(model, loader)
    exit_logits, labels = predict(model, loader, accelerator, desc=cfg.eval_split)
    net = accelerator.unwrap_model(model)
    local = Path(cfg.eval_model).is_dir()
    out_dir = (Path(model_dir) if local else Path(cfg.output_dir)) / f"eval_{cfg.eval_split}"
    results = report(exit_logits, labels, net.config, data, net.config.tau, out_dir, cfg.eval_split,
                     cfg.eval_exits, accelerator.is_main_process)
    if accelerator.is_main_process:
        print(f"\n{model_dir} on {cfg.dataset} {cfg.eval_split} ({len(labels)} images)")
        print(format_table(results))
        print(f"\nresults: {out_dir / 'results.json'}, per-class: {out_dir / 'per_class.csv'}, "
              f"plot: {out_dir / 'per_class_accuracy.png'}")
    return results
