"""Running a model over a split: exit logits gathered from every process, bitwise the same for any process count.

The network runs once per split; every score variant (rules, taus, exit weights) is then computed in memory.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from .data.loaders import LoaderSpec, build_eval_loader
from .utils.errors import ModelError
from .utils.logging import progress


@torch.no_grad()
def predict(model, loader, accelerator, exits: Optional[Sequence[int]] = None, desc: str = "eval"
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exit logits ``[K, N, C]`` (float32, CPU) and labels ``[N]`` of a whole split, gathered over processes."""
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    logits, labels = [], []
    for batch in progress(loader, desc=desc, main=accelerator.is_local_main_process):
        with accelerator.autocast():
            outs = net.exit_logits(batch["pixel_values"], exits)
        stacked = torch.stack([o.float() for o in outs], dim=1)  # [B, K, C]: one gather for all exits
        stacked, y = accelerator.gather_for_metrics((stacked, batch["labels"]))
        logits.append(stacked.cpu())
        labels.append(y.cpu())
    net.train(was_training)
    return torch.cat(logits).transpose(0, 1).contiguous(), torch.cat(labels)


def process_invariant_loader(data, split: str, spec: LoaderSpec, num_processes: int) -> Tuple[DataLoader, int]:
    """An evaluation loader whose every forward pass holds ``spec.eval_batch_size`` images on each process, and the
    split's true size; keep that many gathered rows.

    Convolution and matrix kernels pick their algorithm by input shape, so an image's logits can change in the
    last bits with the batch size (not with the other images of the batch). With a per-process batch that does not
    depend on the process count, and the split padded with its own first images to whole rounds of
    ``eval_batch_size x num_processes``, every image is computed in a batch of the same shape: the gathered
    outputs, and every number made from them, are bitwise those of one process.
    """
    if split not in data.splits:
        raise ModelError(f"split {split!r} does not exist for this dataset; available: {sorted(data.splits)}")
    dataset = data.splits[split]
    size = len(dataset)
    per_round = spec.eval_batch_size * num_processes
    padding = -size % per_round
    padded = dataset.select(list(range(size)) + [i % size for i in range(padding)]) if padding else dataset
    return build_eval_loader(dataclasses.replace(data, splits={split: padded}), split, spec, 1), size


def predict_split(model, loader, accelerator, size: int, desc: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``predict`` over a :func:`process_invariant_loader`: exit logits ``[K, size, C]`` and labels, padding dropped."""
    exit_logits, labels = predict(model, loader, accelerator, desc=desc)
    return exit_logits[:, :size], labels[:size]


def check_model_matches_data(model_config, data, where: str) -> None:
    """A model trained on other data would give silently wrong numbers: compare classes (names and count) and
    training counts."""
    if model_config.num_labels != data.num_classes:
        raise ModelError(f"{where} was trained for {model_config.num_labels} classes but the dataset has "
                         f"{data.num_classes}; evaluate it on the dataset it was trained on (--dataset/--data_dir)")
    names = [str(model_config.id2label[i]) for i in range(model_config.num_labels)]
    differing = [(i, a, b) for i, (a, b) in enumerate(zip(names, map(str, data.class_names))) if a != b]
    if differing and not all(a == f"LABEL_{i}" for i, a, _ in differing):
        shown = ", ".join(f"class {i}: model {a!r} vs data {b!r}" for i, a, b in differing[:3])
        raise ModelError(f"{where} was trained on other classes than this dataset has ({len(differing)} names "
                         f"differ; {shown}); evaluate it on the dataset it was trained on")
    counts = model_config.class_counts
    if counts is not None and list(counts) != list(data.class_counts):
        diff = next(i for i, (a, b) in enumerate(zip(counts, data.class_counts)) if a != b)
        raise ModelError(f"{where} was trained with other per-class counts than this dataset's training split "
                         f"(class {diff} {names[diff]!r}: {counts[diff]} vs {data.class_counts[diff]}); a different "
                         f"dataset, imbalance factor or seed? Use the settings of its run_config.yaml")
