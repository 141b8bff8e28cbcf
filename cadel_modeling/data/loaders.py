"""DataLoaders for training and evaluation. ``batch_size`` in configs is the global batch, split over processes."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..samplers import make_sampler
from .transforms import build_transform, collate, with_image_transform


def per_process_batch(global_batch: int, num_processes: int, accum: int = 1) -> int:
    if global_batch % (num_processes * accum):
        raise ValueError(f"batch_size {global_batch} is the global batch and must divide by num_processes "
                         f"({num_processes}) x grad_accum_steps ({accum}); pick a multiple")
    return global_batch // (num_processes * accum)


def build_train_loader(cfg, data, num_processes: int) -> DataLoader:
    tfm = build_transform(True, cfg.image_size, data.mean, data.std, cfg.augmentation, cfg.color_jitter)
    ds = with_image_transform(data.train, tfm, data.image_column, data.label_column)
    sampler = make_sampler(cfg.sampler, data.train[data.label_column], seed=cfg.seed)
    return DataLoader(ds, batch_size=per_process_batch(cfg.batch_size, num_processes, cfg.grad_accum_steps),
                      shuffle=sampler is None, sampler=sampler, drop_last=True, collate_fn=collate,
                      num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                      pin_memory=torch.cuda.is_available())


def build_eval_loader(cfg, data, split: str, num_processes: int) -> DataLoader:
    if split not in data.splits:
        raise ValueError(f"split {split!r} does not exist for {cfg.dataset}; available: {sorted(data.splits)}")
    tfm = build_transform(False, cfg.image_size, data.mean, data.std, cfg.augmentation, cfg.color_jitter)
    ds = with_image_transform(data.splits[split], tfm, data.image_column, data.label_column)
    bs = max(1, cfg.eval_batch_size // num_processes)
    return DataLoader(ds, batch_size=bs, shuffle=False, collate_fn=collate, num_workers=cfg.num_workers,
                      pin_memory=torch.cuda.is_available())
