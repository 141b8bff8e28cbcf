"""Stage 2 from a stage-1 run, then learned exit weights; every choice is made on the validation split.

- ``logit_adjustment`` (the original's whole stage 2): tau from the grid with the best validation top-1.
- ``crt`` (classifier re-training, Kang et al. 2020; a departure from the released CADEL code, whose stage-2
  configs only hint at it): the cosine classifier of the last exit (``crt_exits: last``) or of every exit (``all``)
  is re-trained with class-balanced sampling while everything else stays frozen, the best epoch kept; then tau on
  top (0 included in its grid, so adjustment is applied only when it helps on validation).
- Both then search exit weights and a tau for the ensemble (``ensemble.json`` next to the weights).

The network runs once per split: logits (and, for cRT, the classifiers' input features) are gathered once and
every candidate is scored in memory.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import build_datasets
from .evaluation import (ENSEMBLE_FILE, check_model_matches_data, load_model, predict_split,
                         process_invariant_loader, report, selected_exits, selection_name)
from .metrics import format_table
from .modeling import CadelForImageClassification, CosineClassifier
from .optim import scheduled_lr, set_learning_rate
from .posthoc import ensemble_scores, pick_tau, search_exit_weights, tau_sweep
from .samplers import make_sampler
from .training import accuracy, make_accelerator, save_model, write_json

logger = logging.getLogger("cadel")

CRT_FEATURES = ("precomputed once with the frozen model in eval mode and the evaluation transform (no "
                "augmentation): the features are then a fixed function of the image, so one forward pass over the "
                "training split replaces one per epoch")


# ------------------------------------------------------------------------------------------------ features
def classifier_of(net: CadelForImageClassification, exit_number: int) -> CosineClassifier:
    """The cosine classifier ending 1-based exit ``exit_number`` (the last one is the backbone's own)."""
    return net.classifier if exit_number == len(net.aux_exits) + 1 else net.aux_exits[exit_number - 1].classifier


@torch.no_grad()
def extract_features(model, loader, accelerator, exits: Sequence[int], size: int, desc: str = "features"
                     ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Inputs of the given exits' cosine classifiers over the first ``size`` images of a (padded) split
    ([size, D_k] each, float32, CPU) and their labels, gathered over processes. Captured by forward pre-hooks, so
    the exits run exactly as at inference."""
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    captured = {}
    hooks = [classifier_of(net, k).register_forward_pre_hook(lambda m, args, k=k: captured.__setitem__(k, args[0]))
             for k in exits]
    features, labels = [[] for _ in exits], []
    try:
        for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
            with accelerator.autocast():
                net.exit_features(batch["pixel_values"], exits)
            gathered, y = accelerator.gather_for_metrics(([captured[k].float() for k in exits], batch["labels"]))
            for store, f in zip(features, gathered):
                store.append(f.cpu())
            labels.append(y.cpu())
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return [torch.cat(f)[:size] for f in features], torch.cat(labels)[:size]


@torch.no_grad()
def logits_from_features(classifiers: Sequence[nn.Module], features: Sequence[torch.Tensor], accelerator,
                         chunk: int = 8192) -> torch.Tensor:
    """``[K, N, C]`` logits (float32, CPU) of each classifier on its exit's features, in fixed-size chunks and
    under the same autocast as the network's own forward pass."""
    with accelerator.autocast():
        return torch.stack([torch.cat([classifier(f[i:i + chunk].to(accelerator.device)).float().cpu()
                                       for i in range(0, len(f), chunk)])
                            for classifier, f in zip(classifiers, features)])


# ------------------------------------------------------------------------------------------------ cRT
def crt_settings(cfg, num_exits: int) -> dict:
    """What cRT will do, as recorded in stage2_results.json."""
    return {"exits": [num_exits] if cfg.crt_exits == "last" else list(range(1, num_exits + 1)),
            "epochs": cfg.crt_epochs, "lr": cfg.crt_lr,
            "batch_size": cfg.crt_batch_size or cfg.batch_size,
            "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "schedule": "cosine per epoch, no warmup",
            "reinit": cfg.crt_reinit, "sampler": "class_balanced", "features": CRT_FEATURES}


def retrain_classifiers(cfg, accelerator, model: CadelForImageClassification, data
                        ) -> Tuple[Dict[str, Tuple[torch.Tensor, torch.Tensor]], dict]:
    """cRT: re-train the chosen exits' cosine classifiers on frozen features with class-balanced sampling.

    The model is never optimised and runs in eval mode under no_grad (BatchNorm statistics untouched, dropout off,
    as at inference), so only the re-trained classifiers' weights change. The features of every split are gathered
    on every process, and each process makes the same classifier updates from the same global class-balanced
    batches: a linear layer costs little, there is no gradient all-reduce, and the result is bitwise the same for
    any number of processes. The epoch with the best validation top-1 of the inference rule (tau = 0) is kept.
    Returns the val/test exit logits of the re-trained model and the cRT record.
    """
    if cfg.streaming:
        raise ValueError("stage2_method crt needs a map-style training split to sample class-balanced from; "
                         "run it with --streaming false")
    num_exits = len(model.aux_exits) + 1
    settings = crt_settings(cfg, num_exits)
    exits, rule = settings["exits"], model.config.resolved_inference_rule
    splits = dataclasses.replace(data, splits={"train": data.train, **data.splits})
    loaders = {s: process_invariant_loader(cfg, splits, s, accelerator.num_processes)
               for s in ("train", "val", "test") if s in splits.splits}
    model, *prepared = accelerator.prepare(model.eval(), *(dl for dl, _ in loaders.values()))
    every_exit = list(range(1, num_exits + 1))
    features = {s: extract_features(model, dl, accelerator, exits if s == "train" else every_exit, size, s)
                for (s, (_, size)), dl in zip(loaders.items(), prepared)}
    train_features, train_labels = features.pop("train")
    net = accelerator.unwrap_model(model)
    val_features, val_labels = features["val"]
    stage1_val_logits = logits_from_features([classifier_of(net, k) for k in every_exit], val_features, accelerator)
    counts = net.config.class_counts

    heads = nn.ModuleList([copy.deepcopy(classifier_of(net, k)) for k in exits]).requires_grad_(True)
    if settings["reinit"]:  # cRT starts from a fresh classifier (the constructor's init), seeded
        generator = torch.Generator().manual_seed(cfg.seed)
        for head in heads:
            bound = 1.0 / math.sqrt(head.weight.shape[1])
            with torch.no_grad():
                head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=generator))
    optimizer = torch.optim.SGD(heads.parameters(), lr=cfg.crt_lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    sampler = make_sampler("class_balanced", train_labels.tolist(), seed=cfg.seed)
    index_loader = DataLoader(torch.arange(len(train_labels)), batch_size=settings["batch_size"], sampler=sampler,
                              drop_last=True)
    steps = len(index_loader)
    if steps == 0:
        raise ValueError(f"crt batch size {settings['batch_size']} is larger than the training split "
                         f"({len(train_labels)} images); lower it")

    def val_top1_with(classifiers) -> float:
        logits = stage1_val_logits.clone()
        logits[[k - 1 for k in exits]] = logits_from_features(
            classifiers, [val_features[k - 1] for k in exits], accelerator)
        return accuracy(ensemble_scores(logits, counts, 0.0, rule, cfg.eval_exits), val_labels)

    schedule = SimpleNamespace(lr=cfg.crt_lr, min_lr=0.0, epochs=cfg.crt_epochs, scheduler="cosine_epoch")
    best, log = None, []
    for epoch in range(1, cfg.crt_epochs + 1):
        set_learning_rate(optimizer, scheduled_lr(schedule, epoch, 0, steps))
        sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=accelerator.device)
        for index in index_loader:
            labels = train_labels[index].to(accelerator.device)
            loss = sum(F.cross_entropy(head(f[index].to(accelerator.device)), labels)
                       for head, f in zip(heads, train_features))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        record = {"epoch": epoch, "train_loss": (loss_sum / steps).item(),
                  "lr": scheduled_lr(schedule, epoch, 0, steps), "val_top1": val_top1_with(heads)}
        log.append(record)
        logger.info("cRT epoch %d/%d loss %.4f val top-1 %.2f%%", epoch, cfg.crt_epochs, record["train_loss"],
                    100 * record["val_top1"])
        if best is None or record["val_top1"] > best[0]:
            best = (record["val_top1"], epoch, copy.deepcopy(heads.state_dict()))
    heads.load_state_dict(best[2])
    for k, head in zip(exits, heads):
        classifier_of(net, k).load_state_dict(head.state_dict())
    stage1_val = accuracy(ensemble_scores(stage1_val_logits, counts, 0.0, rule, cfg.eval_exits), val_labels)
    logits = {s: (logits_from_features([classifier_of(net, k) for k in every_exit], f, accelerator), y)
              for s, (f, y) in features.items()}
    return logits, {**settings, "best_epoch": best[1], "best_val_top1": best[0], "stage1_val_top1": stage1_val,
                    "log": log}


# ------------------------------------------------------------------------------------------------ driver
def tau_grid_for(cfg) -> List[float]:
    """The configured grid; cRT also tries tau = 0 first (it may already be balanced), or only 0 when its
    adjustment is turned off."""
    grid = [float(t) for t in cfg.tau_grid]
    if cfg.stage2_method != "crt":
        return grid
    if not cfg.crt_logit_adjustment:
        return [0.0]
    return [0.0] + [t for t in grid if t != 0.0]


def choices_text(summary: dict, num_exits: int) -> str:
    """What stage 2 chose, one line per decision, for the log and the printed report."""
    lines = [f"stage 2 ({summary['method']}), every choice made on the validation split:"]
    crt = summary.get("crt")
    if crt:
        lines.append(f"  cRT of exit{'s' if len(crt['exits']) > 1 else ''} {', '.join(map(str, crt['exits']))}: "
                     f"best epoch {crt['best_epoch']}/{crt['epochs']} (val top-1 {100 * crt['best_val_top1']:.2f}%, "
                     f"stage-1 classifiers {100 * crt['stage1_val_top1']:.2f}%), lr {crt['lr']:g}, batch "
                     f"{crt['batch_size']}, class-balanced sampling")
    sweep = ", ".join(f"{r['tau']:g}: {100 * r['top1']:.2f}" for r in summary["val_sweep"])
    lines.append(f"  tau = {summary['tau']:g} for the {selection_name(tuple(summary['exits']), num_exits)} "
                 f"(val top-1 per tau: {sweep})")
    ens = summary.get("ensemble")
    if ens:
        rules = ", ".join(f"{name} {100 * v:.2f}%" for name, v in ens["rules_val_top1"].items())
        lines.append(f"  learned exit weights {'/'.join(f'{w:.2f}' for w in ens['normalized_weights'])} with tau = "
                     f"{ens['tau']:g}: val top-1 {100 * ens['val_top1']:.2f}% (best of the rules: {rules}; "
                     f"{ens['num_candidates']} candidates, grid step {ens['grid_step']:g})")
    return "\n".join(lines)


def run(cfg) -> dict:
    from .stage1 import setup_logging
    accelerator = make_accelerator()
    setup_logging(accelerator)
    stage1 = Path(cfg.stage1_dir)
    model_dir = stage1 / "best_model"
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} has no model: run train_stage1.py with --output_dir {stage1} first")
    out = stage1 / f"stage2_{cfg.stage2_method}"
    with accelerator.main_process_first():
        data = build_datasets(cfg)
    if "val" not in data.splits:
        raise ValueError(f"stage 2 chooses tau, epochs and exit weights on a 'val' split, which {cfg.dataset} "
                         f"lacks; give the dataset a validation split (e.g. --val_per_class)")
    model = load_model(model_dir)
    check_model_matches_data(model, data, str(model_dir))
    main_exits = selected_exits(len(model.aux_exits) + 1, model.config.resolved_inference_rule, cfg.eval_exits)
    if cfg.stage2_method == "crt":
        logits, crt = retrain_classifiers(cfg, accelerator, model, data)
        net = model
    else:
        loaders = {s: process_invariant_loader(cfg, data, s, accelerator.num_processes)
                   for s in ("val", "test") if s in data.splits}
        model, *prepared = accelerator.prepare(model, *(dl for dl, _ in loaders.values()))
        logits = {s: predict_split(model, dl, accelerator, size, s)  # one pass per split
                  for (s, (_, size)), dl in zip(loaders.items(), prepared)}
        net, crt = accelerator.unwrap_model(model), None
    rule = net.config.resolved_inference_rule
    counts = net.config.class_counts
    grid = tau_grid_for(cfg)
    val_logits, val_labels = logits["val"]
    num_exits = val_logits.shape[0]
    sweep = tau_sweep(val_logits, val_labels, counts, grid, rule, cfg.eval_exits)
    tau = pick_tau(sweep)
    net.config.tau = tau
    step = cfg.exit_weight_step
    ensemble = search_exit_weights(val_logits.to(accelerator.device), val_labels, counts, grid, step, rule) \
        if step else None
    summary = {"method": cfg.stage2_method, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
               "num_processes": accelerator.num_processes,
               "inference_rule": rule, "exits": list(main_exits),
               "tau": tau, "tau_selected_on": "val", "tau_grid": grid, "val_top1": max(r["top1"] for r in sweep),
               "val_sweep": sweep, "crt": crt, "ensemble": ensemble}
    if accelerator.is_main_process:
        print("\n" + choices_text(summary, num_exits))
    if "test" in logits:
        test_logits, test_labels = logits["test"]
        summary["test_sweep"] = tau_sweep(test_logits, test_labels, counts, grid, rule, cfg.eval_exits)
        results = report(test_logits, test_labels, net.config, data, tau, out / "eval_test", "test", cfg.eval_exits,
                         ensemble, accelerator.is_main_process, cfg.eval_test_agnostic,
                         provenance={k: summary[k] for k in ("command", "num_processes")})
        summary["test"] = {name: {m: v for m, v in r.items() if m != "per_class_accuracy"}
                           for name, r in results.items()}
        if accelerator.is_main_process:
            print("\ntest split:\n" + format_table(results))
    if accelerator.is_main_process:
        save_model(net, out / "model", cfg)
        if ensemble:
            write_json(out / "model" / ENSEMBLE_FILE, {**ensemble, "selected_on": "val"})
        else:  # a previous run's weights must not outlive the search being turned off
            (out / "model" / ENSEMBLE_FILE).unlink(missing_ok=True)
        write_json(out / "stage2_results.json", summary)
        logger.info("stage 2 done: model with tau=%g in %s", tau, out / "model")
        if cfg.push_to_hub:  # after every local file is final; a failed push logs and keeps them
            from .hub import push_to_hub
            push_to_hub(out / "model", cfg.hub_model_id, private=cfg.hub_private)
    accelerator.wait_for_everyone()
    return summary
