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


def sync_buffers_from_main(accelerator, model: torch.nn.Module) -> None:
    """Copy process 0's buffers (BatchNorm running statistics) to every process.

    DDP averages gradients, not buffers: it copies rank 0's buffers to the others at the start of each training
    forward, so after an epoch's last step each process holds the statistics of its own last batch. Validation runs
    on every process, and only rank 0's buffers are saved; without this copy each process would score its share of
    the validation split with different statistics (measured: the buffer digests of a 2-process run differed).
    """
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer.data, src=0)


def replica_digests(accelerator, model: torch.nn.Module) -> dict:
    """sha256 of the parameters and, apart, of the buffers (by name, float32 bytes) on each process, gathered to all.

    Data-parallel replicas that stayed in step have identical digests (buffers after ``sync_buffers_from_main``).
    """
    import hashlib

    from accelerate.utils import gather_object
    parameter_names = {name for name, _ in model.named_parameters()}
    digests = {"parameters": hashlib.sha256(), "buffers": hashlib.sha256()}
    for name, tensor in sorted(model.state_dict().items()):
        digest = digests["parameters" if name in parameter_names else "buffers"]
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return {kind: gather_object([d.hexdigest()]) for kind, d in digests.items()}
