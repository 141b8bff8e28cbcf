"""Images per second of the training input pipeline: JPEG decode + augmentation through cadel's datasets and
DataLoader, against a plain torchvision ``ImageFolder`` pipeline with the same transforms on the same files.

Writes ``--num_images`` synthetic ImageNet-sized JPEGs (500x375, smooth content plus noise, ~80 kB each) into a temp
folder laid out both as an ImageFolder and as an ImageNet-LT split list, then times, in one run and alternating,
  * torchvision: ``ImageFolder`` + ``DataLoader`` (the baseline),
  * cadel: ``build_datasets(RunConfig(dataset="imagenet_lt", ...))`` + ``build_train_loader``, as training runs it,
  * cadel streamed: the same with ``--streaming true``.
Each pass is one epoch; the clock starts at the first batch, so worker start-up is not counted. The best of
``--repeats`` epochs is reported (other load on the machine only ever slows a pass down); all passes go to the JSON.

    python benchmarks/input_pipeline.py --num_images 2000 --num_workers 2
    python benchmarks/input_pipeline.py --quick          # CI smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from cadel_modeling.config import RunConfig
from cadel_modeling.data import build_datasets
from cadel_modeling.data.loaders import LoaderSpec, build_train_loader
from cadel_modeling.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from train_step import cpu_name  # benchmarks/ is on sys.path when a benchmark script runs

NUM_CLASSES = 10


def write_images(root: Path, num_images: int, seed: int = 0) -> float:
    """ImageNet-like JPEGs under ``root/train/<class>/`` plus ImageNet-LT split lists; returns the mean file size."""
    rng = np.random.default_rng(seed)
    lines = []
    sizes = []
    for i in range(num_images):
        label = i % NUM_CLASSES
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(small).resize((500, 375), Image.BICUBIC), dtype=np.float32)
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        relative = f"train/class{label:02d}/{i:06d}.JPEG"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / relative, quality=90)
        sizes.append((root / relative).stat().st_size)
        lines.append(f"{relative} {label}\n")
    for split in ("train", "val", "test"):
        (root / f"ImageNet_LT_{split}.txt").write_text("".join(lines if split == "train" else lines[:NUM_CLASSES]))
    return float(np.mean(sizes))


def torchvision_loader(root: Path, args) -> DataLoader:
    transform = T.Compose([T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(),
                           T.ColorJitter(args.color_jitter, args.color_jitter, args.color_jitter, 0),
                           T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = tv_datasets.ImageFolder(str(root / "train"), transform=transform)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.num_workers)


def cadel_loader(root: Path, args, streaming: bool) -> DataLoader:
    cfg = RunConfig(dataset="imagenet_lt", data_dir=str(root), image_size=args.image_size, augmentation="imagenet",
                    color_jitter=args.color_jitter, batch_size=args.batch_size, num_workers=args.num_workers,
                    streaming=streaming, sampler="instance")
    return build_train_loader(build_datasets(cfg), LoaderSpec.from_config(cfg), num_processes=1, process_index=0)


def images_per_second(loader: DataLoader) -> float:
    """One epoch; the clock starts when the first batch arrives (after worker start-up)."""
    iterator = iter(loader)
    next(iterator)
    start, images = time.perf_counter(), 0
    for batch in iterator:
        images += len(batch[0] if isinstance(batch, (list, tuple)) else batch["labels"])
    return images / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=2000)
    parser.add_argument("--num_workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--color_jitter", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per pipeline (the best is reported)")
    parser.add_argument("--output_json", default="input_pipeline.json")
    parser.add_argument("--quick", action="store_true", help="160 images, batch 16, one epoch each: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_images, args.batch_size, args.repeats = 160, 16, 1
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mean_bytes = write_images(root, args.num_images)
        loaders = {"torchvision ImageFolder": torchvision_loader(root, args),
                   "cadel (map-style)": cadel_loader(root, args, streaming=False),
                   "cadel (streamed)": cadel_loader(root, args, streaming=True)}
        rates = {name: [] for name in loaders}
        for _ in range(args.repeats):           # alternate, so machine noise hits every pipeline alike
            for name, loader in loaders.items():
                rates[name].append(images_per_second(loader))
    baseline = max(rates["torchvision ImageFolder"])
    result = {
        "num_images": args.num_images, "mean_jpeg_kb": round(mean_bytes / 1024, 1), "image_size": args.image_size,
        "batch_size": args.batch_size, "num_workers": args.num_workers, "repeats": args.repeats,
        "cpu_count": os.cpu_count(), "cpu": cpu_name(), "load_average_1min_before": round(load_before, 2),
        "torch": torch.__version__, "pipelines": {
            name: {"images_per_s": round(max(r), 1), "all_runs": [round(x, 1) for x in r],
                   "ratio_to_torchvision": round(max(r) / baseline, 3)} for name, r in rates.items()}}
    print(f"{args.num_images} JPEGs of {result['mean_jpeg_kb']} kB, {args.image_size}px, batch {args.batch_size}, "
          f"{args.num_workers} workers, best of {args.repeats} epochs")
    print(f"{'pipeline':<26}{'images/s':>10}{'ratio':>8}")
    for name, row in result["pipelines"].items():
        print(f"{name:<26}{row['images_per_s']:>10.1f}{row['ratio_to_torchvision']:>8.3f}")
    Path(args.output_json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
