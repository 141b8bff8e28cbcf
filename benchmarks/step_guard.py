#!/usr/bin/env python
"""What the training loop's safety costs: cadel's real ``train_one_epoch`` (every step's non-finite and stop flags
reduced across processes, a skipped step undone on the device, the flags read on the host ``lag`` steps late)
against the same steps with no flag handling at all (``unguarded_epoch`` here: the loop itself has no switch for
it), in the same run, on the same batches.

    python benchmarks/step_guard.py                         # ResNet-50 light cascade at 224 px on the GPU
    python benchmarks/step_guard.py --quick                 # tiny model on the CPU (tests)

Prints and returns images/s of both and their ratio (guarded / unguarded), and how many flag reads had to wait for
the device (0 means the host never stalled on a flag; counted by wrapping ``StepFlags._pop``).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import List, Optional
from unittest import mock

import torch


def unguarded_epoch(model, batches, optimizer, loss_fn, accelerator, opts) -> float:
    """``train_one_epoch``'s steps (lr, seeds, mixup, forward, loss, backward, step) without its guard: no
    non-finite check, no skip, no stop flag, no host read until the epoch's mean loss. The baseline of the ratio."""
    from cadel_modeling.training.loop import step_seed
    from cadel_modeling.training.losses import annealing_T, mixup_batch
    from cadel_modeling.training.optim import set_learning_rate
    from cadel_modeling.utils.logging import progress

    model.train()
    T = annealing_T(1, opts.schedule.epochs)
    mixup_gen = torch.Generator()
    loss_sum = torch.zeros((), device=accelerator.device)
    for step, batch in enumerate(progress(batches, desc="unguarded", main=accelerator.is_local_main_process)):
        set_learning_rate(optimizer, opts.schedule.at(1, step, len(batches)))
        seed = step_seed(opts.seed, accelerator.process_index, step, 0)
        torch.manual_seed(seed)
        mixup_gen.manual_seed(seed)
        x = batch["pixel_values"]
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x, y_a, y_b, lam = mixup_batch(x, batch["labels"], opts.mixup_alpha, mixup_gen)
        with accelerator.accumulate(model):
            loss = loss_fn(model(pixel_values=x).exit_logits, y_a, y_b, lam, T)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
    return accelerator.reduce(loss_sum / max(len(batches), 1), reduction="mean").item()


def measure(backbone: str, image_size: int, batch: int, steps: int, warmup: int, repeats: int, precision: str,
            aux_head: str = "light") -> dict:
    from accelerate import Accelerator

    from cadel_modeling.config import RunConfig
    from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
    from cadel_modeling.training import loop
    from cadel_modeling.training.checkpointing import TrainState
    from cadel_modeling.training.losses import CascadeLoss
    from cadel_modeling.training.optim import OptimizerSpec, build_optimizer

    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision if cuda else "no")
    device = accelerator.device
    torch.manual_seed(0)
    model = CadelForImageClassification(CadelConfig(backbone=backbone, num_labels=1000, image_size=image_size,
                                                    aux_head=aux_head, class_counts=list(range(1000, 0, -1))))
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    cfg = RunConfig(backbone=backbone, image_size=image_size, epochs=10, mixup_alpha=0.5, lr=0.01,
                    channels_last=cuda)
    optimizer = build_optimizer(model, OptimizerSpec.from_config(cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = CascadeLoss(class_counts=list(range(1000, 0, -1))).to(device)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    batches = [{"pixel_values": x, "labels": torch.randint(0, 1000, (batch,), device=device)}] * (warmup + steps)
    opts = loop.LoopOptions.from_config(cfg)
    epochs = {"guarded": lambda b: loop.train_one_epoch(model, b, optimizer, loss_fn, accelerator, opts, TrainState(),
                                                        steps_per_epoch=len(b)),
              "unguarded": lambda b: unguarded_epoch(model, b, optimizer, loss_fn, accelerator, opts)}
    rates = {"guarded": [], "unguarded": []}
    waits = [0]
    real_pop = loop.StepFlags._pop

    def pop_counting_waits(self):  # a flag read waits when its copy has not landed yet
        event = self.pending[0][2]
        waits[0] += event is not None and not event.query()
        return real_pop(self)

    with mock.patch.object(loop.StepFlags, "_pop", pop_counting_waits):
        for _ in range(repeats):  # alternate, so drifting clocks or neighbours hit both alike
            for name, epoch in epochs.items():
                epoch(batches[:warmup])
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                epoch(batches[:steps])
                if cuda:
                    torch.cuda.synchronize()
                rates[name].append(batch * steps / (time.perf_counter() - start))
    best = {k: max(v) for k, v in rates.items()}
    return {"backbone": backbone, "aux_head": aux_head, "image_size": image_size, "batch": batch, "steps": steps,
            "device": str(device), "precision": precision if cuda else "no",
            "guarded_img_s": round(best["guarded"], 1), "unguarded_img_s": round(best["unguarded"], 1),
            "ratio": best["guarded"] / best["unguarded"], "flag_waits": waits[0], "all_rates": rates}


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.image_size, args.batch, args.steps, args.warmup, args.repeats = \
            "test_resnet", 32, 8, 4, 1, 1
    result = measure(args.backbone, args.image_size, args.batch, args.steps, args.warmup, args.repeats,
                     args.precision)
    print(f"{result['backbone']} ({result['aux_head']} heads) on {result['device']}: guarded "
          f"{result['guarded_img_s']} img/s, unguarded {result['unguarded_img_s']} img/s, ratio "
          f"{result['ratio']:.3f}; flag reads that waited: {result['flag_waits']}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
