"""DataLoaders for training and evaluation. ``batch_size`` in configs is the global batch, split over processes.

Decoding and augmentation run in the DataLoader workers. A streamed training split (``cfg.streaming``) is already
split per process here (``split_dataset_by_node``), so accelerate must not shard or dispatch it again: prepare it as a
one-process loader (see ``build_train_loader``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader

from ..utils.errors import ConfigError
from .base import is_streamed, label_array
from .gpu_augment import EncodedImages, collate_encoded
from .samplers import make_sampler
from .streaming import min_examples_per_process, split_for_process
from .transforms import (
    EpochSeededAugmentation,
    NormalizingCollate,
    build_transform,
    map_image_transform,
    with_image_transform,
)


@dataclass(frozen=True)
class LoaderSpec:
    """How images become batches; ``from_config`` reads it from a run config (stage 2 and evaluation: the model's)."""

    image_size: int = 224
    augmentation: str = "imagenet"
    color_jitter: float = 0.4
    hflip: bool = True
    batch_size: int = 128          # global training batch
    grad_accum_steps: int = 1
    eval_batch_size: int = 256     # per process and forward pass
    num_workers: int = 2
    sampler: str = "instance"
    seed: int = 0
    bad_image_policy: str = "fail"
    decode_on_gpu: bool = False
    reduced_decode: bool = True

    @classmethod
    def from_config(cls, cfg) -> LoaderSpec:
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})


def per_process_batch(global_batch: int, num_processes: int, accum: int = 1) -> int:
    if global_batch % (num_processes * accum):
        raise ConfigError(f"batch_size {global_batch} is the global batch and must divide by num_processes "
                          f"({num_processes}) x grad_accum_steps ({accum}); pick a multiple")
    return global_batch // (num_processes * accum)


def _workers(num_workers: int, stream=None) -> int:
    """DataLoader workers; a stream gives each worker whole shards, so more workers than shards would idle."""
    return num_workers if stream is None else min(num_workers, stream.num_shards)


def build_train_loader(data, spec: LoaderSpec, num_processes: int, process_index: Optional[int] = None) -> DataLoader:
    """The training DataLoader of one process.

    Map-style data: shuffled (or ``cfg.sampler``), to be sharded by ``accelerator.prepare``. Streamed data: this
    process's shards (``process_index`` defaults to accelerate's ``PartialState().process_index``), decoded by a lazy
    ``map`` in the workers; give it to accelerate as a single-process loader, e.g.
    ``accelerate.data_loader.prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0,
    put_on_device=True, dispatch_batches=False)``, and call ``set_epoch`` on that each epoch.
    """
    batch = per_process_batch(spec.batch_size, num_processes, spec.grad_accum_steps)
    tfm = build_transform(True, spec.image_size, data.mean, data.std, spec.augmentation,
                          data.train_color_jitter(spec.color_jitter), spec.hflip, spec.reduced_decode, normalize=False)
    collate = NormalizingCollate(data.mean, data.std)
    policy = {"bad_image_policy": spec.bad_image_policy, "skipped": data.skipped_images}
    if is_streamed(data.train):
        if spec.sampler != "instance":
            raise ConfigError(f"--sampler {spec.sampler} draws rows by index, which a streamed split cannot do; use "
                              f"--sampler instance with --streaming, or turn streaming off")
        if process_index is None:
            from accelerate import PartialState
            process_index = PartialState().process_index
        stream = split_for_process(data.train, process_index, num_processes)
        ds = map_image_transform(stream, tfm, data.image_column, data.label_column, batch_size=batch, **policy)
        workers = _workers(spec.num_workers, stream)
        return DataLoader(ds, batch_size=batch, drop_last=True, collate_fn=collate, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
    if spec.decode_on_gpu:  # the workers only read files; the loop decodes and augments (gpu_augment.py)
        if spec.augmentation != "imagenet":
            raise ConfigError(f"--decode_on_gpu runs the 'imagenet' augmentation on the device; --augmentation "
                              f"{spec.augmentation} runs on the CPU (drop --decode_on_gpu)")
        sampler = make_sampler(spec.sampler, label_array(data.train, data.label_column), seed=spec.seed)
        return DataLoader(EncodedImages(data.train, data.image_column, data.label_column), batch_size=batch,
                          shuffle=sampler is None, sampler=sampler, drop_last=True, collate_fn=collate_encoded,
                          num_workers=spec.num_workers, persistent_workers=False)
    ds = EpochSeededAugmentation(with_image_transform(data.train, tfm, data.image_column, data.label_column,
                                                      **policy), seed=spec.seed)
    sampler = make_sampler(spec.sampler, label_array(data.train, data.label_column), seed=spec.seed)
    # Workers are re-created each epoch so they see the dataset's new epoch (see EpochSeededAugmentation).
    return DataLoader(ds, batch_size=batch, shuffle=sampler is None, sampler=sampler, drop_last=True,
                      collate_fn=collate, num_workers=spec.num_workers, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def streamed_steps_per_epoch(data, spec: LoaderSpec, num_processes: int) -> int:
    """Optimizer steps per epoch that every process of a streamed run can make (a streamed loader has no length).

    Processes get slightly different numbers of examples and each DataLoader worker drops its own last partial
    batch, so this is a lower bound: stop the epoch after this many steps and all processes stay in step; the few
    examples left over are different ones each epoch.
    """
    batch = per_process_batch(spec.batch_size, num_processes, spec.grad_accum_steps)
    workers = max(1, _workers(spec.num_workers, data.train))
    least = min_examples_per_process(data.num_train_images, data.train.num_shards, num_processes, workers)
    return max(0, least - workers * (batch - 1)) // batch // spec.grad_accum_steps


def build_eval_loader(data, split: str, spec: LoaderSpec, num_processes: int) -> DataLoader:
    if split not in data.splits:
        raise ConfigError(f"split {split!r} does not exist for this dataset; available: {sorted(data.splits)}")
    tfm = build_transform(False, spec.image_size, data.mean, data.std, spec.augmentation, spec.color_jitter,
                          reduced_decode=spec.reduced_decode, normalize=False)
    ds = with_image_transform(data.splits[split], tfm, data.image_column, data.label_column,
                              bad_image_policy=spec.bad_image_policy, skipped=data.skipped_images)
    bs = max(1, spec.eval_batch_size // num_processes)
    return DataLoader(ds, batch_size=bs, shuffle=False, collate_fn=NormalizingCollate(data.mean, data.std),
                      num_workers=spec.num_workers, pin_memory=torch.cuda.is_available())
