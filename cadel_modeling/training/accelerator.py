"""The ``Accelerator`` every command uses, and the one thing accelerate does not do for us on CPU-only machines."""
from __future__ import annotations

import os

import torch


def make_accelerator(**kwargs):
    """An ``Accelerator`` that also forms a process group on machines without GPUs.

    ``accelerate launch --multi_gpu --num_processes N`` (or ``--num_machines M``) on CPU-only machines starts N
    processes but, unless told to use the CPU, accelerate gives each one a world of its own: N independent copies
    that would all train and write. Asking for the CPU in that case makes them one gloo group; a world that does not
    match WORLD_SIZE is refused.
    """
    from accelerate import Accelerator
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    no_gpu = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    accelerator = Accelerator(cpu=launched and no_gpu, **kwargs)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if accelerator.num_processes != world:
        raise RuntimeError(f"launched with WORLD_SIZE={world} but accelerate formed a group of "
                           f"{accelerator.num_processes}; check the accelerate config (accelerate env)")
    return accelerator


def enable_fast_kernels() -> None:
    """Fixed input sizes: let cuDNN pick the fastest kernels; TF32 for fp32 matrix work (Ampere and newer)."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
