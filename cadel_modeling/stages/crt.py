"""cRT (classifier re-training, Kang et al. 2020) on a trained cascade: the chosen exits' cosine classifiers are
re-trained on frozen features with class-balanced sampling, the best epoch on validation kept.

A departure from the released CADEL code, whose stage-2 configs only hint at it. A stage-2 method (see
``logit_adjustment.py``): ``split_logits``, ``tau_grid`` and ``report_lines`` at the end of this module.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.base import is_streamed
from ..data.loaders import LoaderSpec
from ..data.samplers import make_sampler
from ..inference import process_invariant_loader
from ..metrics import top1
from ..modeling import CadelForImageClassification
from ..posthoc import ensemble_scores
from ..training.optim import LRSchedule, set_learning_rate
from ..utils.errors import ConfigError
from ..utils.logging import progress

logger = logging.getLogger("cadel")

CRT_FEATURES = ("precomputed once with the frozen model in eval mode and the evaluation transform (no "
                "augmentation): the features are then a fixed function of the image, so one forward pass over the "
                "training split replaces one per epoch")


# ------------------------------------------------------------------------------------------------ features
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
    hooks = [net.exit_classifier(k).register_forward_pre_hook(lambda m, args, k=k: captured.__setitem__(k, args[0]))
             for k in exits]
    features, labels = [[] for _ in exits], []
    try:
        for batch in progress(loader, desc=desc, main=accelerator.is_local_main_process):
            with accelerator.autocast():
                net.exit_logits(batch["pixel_values"], exits)
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
@dataclass(frozen=True)
class CRTOptions:
    """What cRT does; ``from_config`` reads it from a run config. Recorded in stage2_results.json."""

    exits: str = "last"            # last | all
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128          # global
    momentum: float = 0.9
    weight_decay: float = 5e-4
    reinit: bool = True
    seed: int = 0
    sampler: str = "class_balanced"

    @classmethod
    def from_config(cls, cfg) -> CRTOptions:
        return cls(exits=cfg.crt_exits, epochs=cfg.crt_epochs, lr=cfg.crt_lr,
                   batch_size=cfg.crt_batch_size or cfg.batch_size, momentum=cfg.momentum,
                   weight_decay=cfg.weight_decay, reinit=cfg.crt_reinit, seed=cfg.seed)

    def exit_numbers(self, num_exits: int) -> List[int]:
        return [num_exits] if self.exits == "last" else list(range(1, num_exits + 1))

    def record(self, num_exits: int) -> dict:
        return {"exits": self.exit_numbers(num_exits), "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "schedule": "cosine per epoch, no warmup", "reinit": self.reinit, "sampler": self.sampler,
                "features": CRT_FEATURES}


def retrain_classifiers(opts: CRTOptions, accelerator, model: CadelForImageClassification, data,
                        loader_spec: LoaderSpec, *, eval_exits: Optional[Sequence[int]] = None
                        ) -> Tuple[Dict[str, Tuple[torch.Tensor, torch.Tensor]], dict]:
    """cRT: re-train the chosen exits' cosine classifiers on frozen features with class-balanced sampling.

    The model is never optimised and runs in eval mode under no_grad (BatchNorm statistics untouched, dropout off,
    as at inference), so only the re-trained classifiers' weights change. The features of every split are gathered
    on every process, and each process makes the same classifier updates from the same global class-balanced
    batches: a linear layer costs little and there is no gradient all-reduce; the weights agree across process counts
    up to float rounding (intra-op thread counts differ; docs/stage2_and_evaluation.md). The epoch with the best
    validation top-1 of the inference rule (tau = 0) is kept.
    Returns the val/test exit logits of the re-trained model and the cRT record.
    """
    if is_streamed(data.train):
        raise ConfigError("stage2_method crt needs a map-style training split to sample class-balanced from; "
                          "run it with --streaming false")
    num_exits = len(model.aux_exits) + 1
    settings = opts.record(num_exits)
    exits, rule = settings["exits"], model.config.resolved_inference_rule
    splits = dataclasses.replace(data, splits={"train": data.train, **data.splits})
    loaders = {s: process_invariant_loader(splits, s, loader_spec, accelerator.num_processes)
               for s in ("train", "val", "test") if s in splits.splits}
    model, *prepared = accelerator.prepare(model.eval(), *(dl for dl, _ in loaders.values()))
    every_exit = list(range(1, num_exits + 1))
    features = {s: extract_features(model, dl, accelerator, exits if s == "train" else every_exit, size, s)
                for (s, (_, size)), dl in zip(loaders.items(), prepared)}
    train_features, train_labels = features.pop("train")
    net = accelerator.unwrap_model(model)
    val_features, val_labels = features["val"]
    stage1_val_logits = logits_from_features([net.exit_classifier(k) for k in every_exit], val_features, accelerator)
    counts = net.config.class_counts

    heads = nn.ModuleList([copy.deepcopy(net.exit_classifier(k)) for k in exits]).requires_grad_(True)
    if opts.reinit:  # cRT starts from a fresh classifier (the constructor's init), seeded
        generator = torch.Generator().manual_seed(opts.seed)
        for head in heads:
            head.reset_parameters(generator)
    optimizer = torch.optim.SGD(heads.parameters(), lr=opts.lr, momentum=opts.momentum,
                                weight_decay=opts.weight_decay)
    sampler = make_sampler(opts.sampler, train_labels.tolist(), seed=opts.seed)
    index_loader = DataLoader(torch.arange(len(train_labels)), batch_size=settings["batch_size"], sampler=sampler,
                              drop_last=True)
    steps = len(index_loader)
    if steps == 0:
        raise ConfigError(f"crt batch size {settings['batch_size']} is larger than the training split "
                          f"({len(train_labels)} images); lower it")

    def val_top1_with(classifiers) -> float:
        logits = stage1_val_logits.clone()
        logits[[k - 1 for k in exits]] = logits_from_features(
            classifiers, [val_features[k - 1] for k in exits], accelerator)
        return top1(ensemble_scores(logits, counts, 0.0, rule, eval_exits), val_labels)

    schedule = LRSchedule("cosine_epoch", opts.lr, opts.epochs)
    best, log = None, []
    # The labels actually drawn, over all epochs: recorded so that the class balance of cRT's batches can be
    # checked from the run's output (tests/test_stage2.py runs a chi-square test on them).
    drawn = torch.zeros(len(counts), dtype=torch.long)
    for epoch in range(1, opts.epochs + 1):
        set_learning_rate(optimizer, schedule.at(epoch))
        sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=accelerator.device)
        for index in index_loader:
            batch_labels = train_labels[index]
            drawn += torch.bincount(batch_labels, minlength=len(counts))
            labels = batch_labels.to(accelerator.device)
            loss = sum(F.cross_entropy(head(f[index].to(accelerator.device)), labels)
                       for head, f in zip(heads, train_features))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        record = {"epoch": epoch, "train_loss": (loss_sum / steps).item(),
                  "lr": schedule.at(epoch), "val_top1": val_top1_with(heads)}
        log.append(record)
        logger.info("cRT epoch %d/%d loss %.4f val top-1 %.2f%%", epoch, opts.epochs, record["train_loss"],
                    100 * record["val_top1"])
        if best is None or record["val_top1"] > best[0]:
            best = (record["val_top1"], epoch, copy.deepcopy(heads.state_dict()))
    heads.load_state_dict(best[2])
    for k, head in zip(exits, heads):
        net.exit_classifier(k).load_state_dict(head.state_dict())
    stage1_val = top1(ensemble_scores(stage1_val_logits, counts, 0.0, rule, eval_exits), val_labels)
    logits = {s: (logits_from_features([net.exit_classifier(k) for k in every_exit], f, accelerator), y)
              for s, (f, y) in features.items()}
    return logits, {**settings, "best_epoch": best[1], "best_val_top1": best[0], "stage1_val_top1": stage1_val,
                    "drawn_per_class": drawn.tolist(), "log": log}


# ------------------------------------------------------------------------------------------------ as a stage-2 method
def split_logits(cfg, accelerator, model, data, loader_spec):
    """The val/test exit logits after cRT, the re-trained network and the cRT record."""
    logits, record = retrain_classifiers(CRTOptions.from_config(cfg), accelerator, model, data, loader_spec,
                                         eval_exits=cfg.eval_exits)
    return logits, model, record


def tau_grid(cfg) -> List[float]:
    """The configured grid with tau = 0 first (the re-trained classifiers may already be balanced), or only 0 when
    cRT's adjustment is turned off."""
    if not cfg.crt_logit_adjustment:
        return [0.0]
    return [0.0] + [t for t in map(float, cfg.tau_grid) if t != 0.0]


def report_lines(record: dict) -> List[str]:
    return [f"  cRT of exit{'s' if len(record['exits']) > 1 else ''} {', '.join(map(str, record['exits']))}: "
            f"best epoch {record['best_epoch']}/{record['epochs']} (val top-1 {100 * record['best_val_top1']:.2f}%, "
            f"stage-1 classifiers {100 * record['stage1_val_top1']:.2f}%), lr {record['lr']:g}, batch "
            f"{record['batch_size']}, class-balanced sampling"]
