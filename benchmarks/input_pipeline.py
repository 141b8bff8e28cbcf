"""Images per second of the training input pipeline: JPEG decode + augmentation through cadel's datasets and
DataLoader, against a plain torchvision ``ImageFolder`` pipeline with the same transforms on the same files.

For each ``--image_sizes`` entry (default: ImageNet-like 500x375 and iNaturalist-like 800x600) it writes
``--num_images`` JPEGs with natural-looking content (smooth multi-scale colour noise, flat shapes with edges, blur and
grain; quality 90) into a temp folder laid out both as an ImageFolder and as an ImageNet-LT split list, then times,
in one run and alternating,
  * torchvision: ``ImageFolder`` + ``DataLoader`` (the baseline),
  * cadel: ``build_datasets(RunConfig(dataset="imagenet_lt", ...))`` + ``build_train_loader``, as training runs it
    (reduced-size JPEG decode on, the default),
  * cadel full decode: the same with ``reduced_decode=False`` (no DCT scaling; JPEGs still stop decoding below the
    crop, which changes no pixel),
  * cadel streamed: the same as cadel with ``--streaming true``.
Each pass is one epoch; the clock starts at the first batch, so worker start-up is not counted. The best of
``--repeats`` epochs is reported (other load on the machine only ever slows a pass down); all passes go to the JSON.

    python benchmarks/input_pipeline.py --num_images 300 --num_workers 1 --repeats 4
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
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from cadel_modeling.config import RunConfig
from cadel_modeling.data import build_datasets
from cadel_modeling.data.loaders import LoaderSpec, build_train_loader
from cadel_modeling.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from train_step import cpu_name  # benchmarks/ is on sys.path when a benchmark script runs

NUM_CLASSES = 10
PIPELINES = ("torchvision ImageFolder", "cadel (map-style)", "cadel (map-style, full decode)", "cadel (streamed)")


def natural_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like test image: colour noise at four scales (smooth regions and texture), 3-8 flat ellipses and
    rectangles (sharp edges), a slight blur and sensor-like grain. At quality 90 a 500x375 one is ~50 kB."""
    image = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 90), (16, 40), (64, 20), (160, 12)):
        noise = rng.normal(0, 1, (max(2, cells * height // width), cells, 3))
        noise = ((noise - noise.min()) / (np.ptp(noise) + 1e-6) * 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(noise).resize((width, height), Image.BICUBIC), np.float32)
        image += (up - 128) * amplitude / 128
    image += rng.integers(40, 200, 3)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        box = (x0, y0, x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    grainy = np.asarray(pil.filter(ImageFilter.GaussianBlur(1.0)), np.float32) + rng.normal(0, 7, (height, width, 3))
    return Image.fromarray(np.clip(grainy, 0, 255).astype(np.uint8))


def write_images(root: Path, num_images: int, width: int = 500, height: int = 375, seed: int = 0) -> float:
    """JPEGs under ``root/train/<class>/`` plus ImageNet-LT split lists; returns the mean file size in bytes."""
    rng = np.random.default_rng(seed)
    lines, sizes = [], []
    for i in range(num_images):
        label = i % NUM_CLASSES
        relative = f"train/class{label:02d}/{i:06d}.JPEG"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        natural_image(rng, width, height).save(root / relative, quality=90)
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


def cadel_loader(root: Path, args, streaming: bool = False, reduced_decode: bool = True) -> DataLoader:
    cfg = RunConfig(dataset="imagenet_lt", data_dir=str(root), image_size=args.image_size, augmentation="imagenet",
                    color_jitter=args.color_jitter, batch_size=args.batch_size, num_workers=args.num_workers,
                    streaming=streaming, sampler="instance", reduced_decode=reduced_decode)
    return build_train_loader(build_datasets(cfg), LoaderSpec.from_config(cfg), num_processes=1, process_index=0)


def build_loaders(root: Path, args) -> dict:
    makers = {"torchvision ImageFolder": lambda: torchvision_loader(root, args),
              "cadel (map-style)": lambda: cadel_loader(root, args),
              "cadel (map-style, full decode)": lambda: cadel_loader(root, args, reduced_decode=False),
              "cadel (streamed)": lambda: cadel_loader(root, args, streaming=True)}
    return {name: makers[name]() for name in PIPELINES if name in args.pipelines}


def images_per_second(loader: DataLoader) -> tuple:
    """(images per wall-clock second, images per CPU second of this process) over one epoch; the clocks start when
    the first batch arrives (after worker start-up). The CPU rate counts all the work only without workers
    (``--num_workers 0``), and then it is the steadier number on a machine shared with other jobs."""
    iterator = iter(loader)
    next(iterator)
    start, cpu_start, images = time.perf_counter(), time.process_time(), 0
    for batch in iterator:
        images += len(batch[0] if isinstance(batch, (list, tuple)) else batch["labels"])
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)


def measure(width: int, height: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mean_bytes = write_images(root, args.num_images, width, height)
        loaders = build_loaders(root, args)
        rates = {name: [] for name in loaders}
        for _ in range(args.repeats):           # alternate, so machine noise hits every pipeline alike
            for name, loader in loaders.items():
                rates[name].append(images_per_second(loader))
    best = {name: (max(r[0] for r in runs), max(r[1] for r in runs)) for name, runs in rates.items()}
    baseline = best["torchvision ImageFolder"]
    rows = {name: {"images_per_s": round(wall, 1), "all_runs": [round(r[0], 1) for r in rates[name]],
                   "ratio_to_torchvision": round(wall / baseline[0], 3)} for name, (wall, _) in best.items()}
    if args.num_workers == 0:
        for name, (_, cpu) in best.items():
            rows[name].update({"images_per_cpu_s": round(cpu, 1), "cpu_all_runs": [round(r[1], 1) for r in rates[name]],
                               "cpu_ratio_to_torchvision": round(cpu / baseline[1], 3)})
    return {"width": width, "height": height, "mean_jpeg_kb": round(mean_bytes / 1024, 1), "pipelines": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=2000, help="JPEGs per image size")
    parser.add_argument("--image_sizes", nargs="+", default=["500x375", "800x600"], help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--color_jitter", type=float, default=0.4)
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES,
                        help="pipelines to time (torchvision's is always timed: the ratios are against it)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per pipeline (the best is reported)")
    parser.add_argument("--output_json", default="input_pipeline.json")
    parser.add_argument("--quick", action="store_true", help="160 small images, batch 16, one epoch each: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_images, args.batch_size, args.repeats, args.image_sizes = 160, 16, 1, ["500x375"]
    args.pipelines = sorted(set(args.pipelines) | {"torchvision ImageFolder"}, key=PIPELINES.index)
    load_before = os.getloadavg()[0]
    sizes = {text: measure(*map(int, text.lower().split("x")), args) for text in args.image_sizes}
    result = {
        "num_images": args.num_images, "image_size": args.image_size, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "repeats": args.repeats, "color_jitter": args.color_jitter,
        "cpu_count": os.cpu_count(), "cpu": cpu_name(), "load_average_1min_before": round(load_before, 2),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
        "image_sizes": sizes}
    print(f"{args.num_images} JPEGs per size, {args.image_size}px crops, batch {args.batch_size}, "
          f"{args.num_workers} workers, best of {args.repeats} epochs")
    for text, row in sizes.items():
        print(f"\n{text} JPEGs ({row['mean_jpeg_kb']} kB on average)\n{'pipeline':<32}{'images/s':>10}{'ratio':>8}"
              + (f"{'img/CPU-s':>11}{'ratio':>8}" if args.num_workers == 0 else ""))
        for name, rate in row["pipelines"].items():
            print(f"{name:<32}{rate['images_per_s']:>10.1f}{rate['ratio_to_torchvision']:>8.3f}"
                  + (f"{rate['images_per_cpu_s']:>11.1f}{rate['cpu_ratio_to_torchvision']:>8.3f}"
                     if args.num_workers == 0 else ""))
    Path(args.output_json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
