#!/usr/bin/env python
"""Stage-2 tau search: cadel's one forward pass per split against the original's forward pass per tau.

The original's stage-2 scripts re-ran the network over the validation split for every tau of the grid. cadel
computes the exit logits of a split once (``training.predict``) and applies every tau in memory
(``posthoc.tau_sweep``). Both run here on the same cascade, the same synthetic split and the same autocast; the
number of correct predictions for every tau is asserted equal, then the wall times are compared.

    python benchmarks/tau_search.py --quick            # tiny CPU smoke run
    python benchmarks/tau_search.py                    # GPU: resnet18 cascade, 224 px, 10,000 images, CNN grid
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence

import torch

from cadel_modeling.inference import predict
from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.posthoc import TAU_GRIDS, ensemble_scores, pick_tau, tau_sweep


class SyntheticSplit:
    """A labelled split of random images, generated batch by batch on the device from fixed seeds: every pass sees
    the same data without holding the split in memory."""

    def __init__(self, num_samples: int, batch_size: int, image_size: int, num_classes: int, device, seed: int = 0):
        self.num_samples, self.batch_size, self.image_size = num_samples, batch_size, image_size
        self.num_classes, self.device, self.seed = num_classes, torch.device(device), seed

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        generator = torch.Generator(self.device)
        for i in range(len(self)):
            n = min(self.batch_size, self.num_samples - i * self.batch_size)
            generator.manual_seed(self.seed + i)
            yield {"pixel_values": torch.randn(n, 3, self.image_size, self.image_size, generator=generator,
                                               device=self.device),
                   "labels": torch.randint(0, self.num_classes, (n,), generator=generator, device=self.device)}


def long_tailed_counts(num_classes: int, max_count: int = 1280, imbalance: float = 256.0) -> List[int]:
    """Exponential-profile training counts (ImageNet-LT's imbalance 1280/5 by default): the prior tau divides by."""
    return [max(1, round(max_count * imbalance ** (-i / max(num_classes - 1, 1)))) for i in range(num_classes)]


@torch.no_grad()
def recompute_per_tau(model, split, accelerator, class_counts: Sequence[int], grid: Sequence[float],
                      rule: str) -> List[Dict[str, float]]:
    """The original's search: a full forward pass over the split for every tau, scores adjusted batch by batch."""
    model.eval()
    results = []
    for tau in grid:
        correct, seen = 0, 0
        for batch in split:
            with accelerator.autocast():
                exit_logits = model.exit_logits(batch["pixel_values"])
            # Adjusted on the CPU in float32 like tau_sweep, so both searches round identically.
            stacked = torch.stack([z.float() for z in exit_logits]).cpu()
            pred = ensemble_scores(stacked, class_counts, float(tau), rule).argmax(-1)
            correct += int((pred == batch["labels"].cpu()).sum())
            seen += len(pred)
        results.append({"tau": float(tau), "correct": correct, "top1": correct / seen})
    return results


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def deterministic_cudnn():
    """Both searches must see bit-identical logits, so cuDNN may not pick algorithms by timing."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def run_tau_benchmark(backbone: str = "resnet18", aux_head: str = "light", num_classes: int = 1000,
                      num_samples: int = 10_000, batch_size: int = 256, image_size: int = 224,
                      grid: Sequence[float] = tuple(TAU_GRIDS["cnn"]), precision: str = "auto") -> Dict:
    """Both searches on one model and split; the correct counts per tau must match. Returns times and their ratio."""
    from accelerate import Accelerator

    mixed = precision if precision != "auto" else ("bf16" if torch.cuda.is_available() else "no")
    accelerator = Accelerator(mixed_precision=mixed)
    device = accelerator.device
    torch.manual_seed(0)
    counts = long_tailed_counts(num_classes)
    config = CadelConfig(backbone=backbone, num_labels=num_classes, image_size=image_size, aux_head=aux_head,
                         class_counts=counts)
    model = CadelForImageClassification(config).to(device).eval()
    rule = config.resolved_inference_rule
    split = SyntheticSplit(num_samples, batch_size, image_size, num_classes, device)
    with deterministic_cudnn():
        with torch.no_grad(), accelerator.autocast():  # allocator and kernel warm-up outside both timings
            model.exit_logits(next(iter(split))["pixel_values"])
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        exit_logits, labels = predict(model, split, accelerator, desc="val")
        sweep = tau_sweep(exit_logits, labels, counts, grid, rule)
        once_s, once_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
        start, start_cpu = time.perf_counter(), time.process_time()
        recomputed = recompute_per_tau(model, split, accelerator, counts, grid, rule)
        _sync(device)
        recompute_s, recompute_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    one_pass_correct = [round(r["top1"] * num_samples) for r in sweep]
    recompute_correct = [r["correct"] for r in recomputed]
    return {"backbone": backbone, "aux_head": aux_head, "rule": rule, "num_samples": num_samples,
            "batch_size": batch_size, "image_size": image_size, "num_classes": num_classes,
            "precision": accelerator.mixed_precision, "device": str(device), "grid": [float(t) for t in grid],
            "tau": pick_tau(sweep), "sweep": sweep, "one_pass_s": once_s, "recompute_s": recompute_s,
            "speedup": recompute_s / once_s, "one_pass_cpu_s": once_cpu_s, "recompute_cpu_s": recompute_cpu_s,
            "cpu_time_speedup": recompute_cpu_s / once_cpu_s, "one_pass_correct": one_pass_correct,
            "recompute_correct": recompute_correct, "one_pass_tau": pick_tau(sweep),
            "recompute_tau": pick_tau(recomputed),
            "results_equal": one_pass_correct == recompute_correct and pick_tau(sweep) == pick_tau(recomputed)}


def format_table(result: Dict) -> str:
    r = result
    return "\n".join([
        "| model | images | taus | one forward + in-memory sweep (s) | forward per tau (s) | speed-up (wall) "
        "| speed-up (process CPU time) | same top-1 |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['backbone']} cascade ({r['aux_head']} heads), {r['image_size']} px, {r['precision']} | "
        f"{r['num_samples']} | {len(r['grid'])} | {r['one_pass_s']:.2f} | {r['recompute_s']:.2f} | "
        f"{r['speedup']:.1f}x | {r['cpu_time_speedup']:.1f}x | {'yes' if r['results_equal'] else 'no'} |"])


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--tau_backbone", default=None, help="default resnet18 (quick: test_resnet)")
    parser.add_argument("--tau_samples", type=int, default=None, help="validation images; default 10000 (quick: 64)")
    parser.add_argument("--tau_batch_size", type=int, default=None, help="default 256 (quick: 32)")
    parser.add_argument("--tau_image_size", type=int, default=None, help="default 224 (quick: 32)")
    return parser


def settings_from_args(args) -> Dict:
    def pick(value, quick, full):
        return value if value is not None else quick if args.quick else full

    return {"backbone": pick(args.tau_backbone, "test_resnet", "resnet18"),
            "num_samples": pick(args.tau_samples, 64, 10_000), "batch_size": pick(args.tau_batch_size, 32, 256),
            "image_size": pick(args.tau_image_size, 32, 224), "num_classes": 10 if args.quick else 1000}


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and split: a CPU smoke run")
    add_arguments(parser)
    parser.add_argument("--out", default=None, help="write the result to this JSON file")
    args = parser.parse_args(argv)
    result = run_tau_benchmark(**settings_from_args(args))
    print(format_table(result))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
