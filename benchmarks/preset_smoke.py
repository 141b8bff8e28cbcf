#!/usr/bin/env python
"""Every paper preset for real: its model (backbone, exits, heads at the paper's size and class count), its loss,
optimizer, mixup and resolution, at its per-GPU batch, bf16 on a GPU, on synthetic images. Prints images/s, peak
memory and the GPU-hours the preset's full stage-1 schedule would take on this device (training steps only:
add ~5-10% for the per-epoch validation).

    python benchmarks/preset_smoke.py --out preset_smoke.json          # on a GPU: every preset
    python benchmarks/preset_smoke.py --quick                          # CPU smoke run, tiny sizes (tests)
"""
from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace
from typing import List, Optional

import torch

# training images per dataset builder (the standard splits; CIFAR-LT and Fashion-MNIST-LT at IF 100)
TRAIN_IMAGES = {"imagenet_lt": 115_846, "inat18": 437_513, "places_lt": 62_500, "cifar10_lt": 12_406,
                "cifar100_lt": 10_847, "fashion_mnist_lt": 1_236}
NUM_CLASSES = {"imagenet_lt": 1000, "inat18": 8142, "places_lt": 365, "cifar10_lt": 10, "cifar100_lt": 100,
               "fashion_mnist_lt": 10}
ALIASES = {"imagenet_lt", "inat18", "places_lt", "imagenet_lt_vit", "inat18_vit", "places_lt_vit"}


def smoke(name: str, steps: int, warmup: int, gpus: int, quick: bool) -> dict:
    from cadel_modeling.config import parse_config
    from cadel_modeling.modeling.factory import build_model
    from cadel_modeling.training.losses import CascadeLoss, mixup_batch
    from cadel_modeling.training.optim import OptimizerSpec, build_optimizer, set_learning_rate

    cfg = parse_config(["--config", name, "--pretrained", "false", "--pretrained_checkpoint", "null"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    classes = NUM_CLASSES[cfg.dataset]
    size, batch = cfg.image_size, max(1, cfg.batch_size // gpus)
    if quick:  # the same code path, small enough for a CPU
        size, batch = min(size, 64 if cfg.family() == "cnn" else 32), 2
        cfg.aux_padding = "same"
    counts = [max(1, 1000 - 3 * i) for i in range(classes)]
    data = SimpleNamespace(num_classes=classes, class_names=[str(i) for i in range(classes)], class_counts=counts,
                           mean=(0.5,) * 3, std=(0.25,) * 3)
    cfg.image_size = size
    model = build_model(cfg, data).to(device)
    channels_last = cuda and cfg.family() == "cnn"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OptimizerSpec.from_config(cfg))
    set_learning_rate(optimizer, cfg.lr)
    loss_fn = CascadeLoss.from_config(cfg, counts).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    gen = torch.Generator().manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        xm, ya, yb, lam = mixup_batch(x, y, cfg.mixup_alpha, gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(model(pixel_values=xm).exit_logits, ya, yb, lam, T=0.5)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    img_s = batch * steps / (time.perf_counter() - start)
    images = TRAIN_IMAGES[cfg.dataset]
    peak = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None
    return {"preset": name, "backbone": cfg.backbone, "aux_head": cfg.aux_head, "image_size": size,
            "per_gpu_batch": batch, "classes": classes, "epochs": cfg.epochs, "device": str(device),
            "img_s": round(img_s, 1), "peak_gib": peak,
            "projected_gpu_hours": round(cfg.epochs * images / img_s / 3600, 2) if not quick else None,
            "loss_finite": bool(torch.isfinite(loss).item())}


def main(argv: Optional[List[str]] = None) -> list:
    from cadel_modeling.config import preset_names
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=None, help="default: every paper preset")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gpus", type=int, default=1, help="split the preset's global batch over this many GPUs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    names = args.presets or [n for n in preset_names() if n not in ALIASES and n != "fashion_mnist_lt"]
    if args.quick:
        args.steps, args.warmup = 1, 0
    rows = []
    for name in names:
        row = smoke(name, args.steps, args.warmup, args.gpus, args.quick)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(rows, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
