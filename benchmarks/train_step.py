#!/usr/bin/env python
"""Training-step throughput of the CADEL cascade against plain timm training of the same backbone.

Every row trains one model on one fixed synthetic batch with the same optimizer (SGD, momentum 0.9, fused on CUDA
as in ``cadel_modeling.training.optim``), precision and memory format, so the ratios isolate the model and its loss:

* ``plain``: ``timm.create_model(backbone, num_classes=C)`` + cross-entropy (the usual timm training step);
* ``light`` / ``faithful``: ``CadelForImageClassification`` with that aux head, the real ``mixup_batch`` (alpha 0.2)
  and the real ``CascadeLoss`` over all exits (CE for CNNs, the original's BCE for ViTs, which have one exit type,
  reported as ``faithful``);
* what cadel's own loop adds around this step (flags, skips) is measured by ``step_guard.py`` on the real loop.

Forward FLOPs per image are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a meta-device twin (no
memory, no compute; convolutions, matrix products and attention; norms, activations, pooling and the loss are not
counted); a training step is taken as 3x the forward (the backward computes input and weight gradients, each
about one forward). Achieved FLOP rate = train FLOPs per image x images/s, so ``flop_rate_ratio`` (cascade FLOP/s /
plain FLOP/s) shows the overhead beyond the extra FLOPs. The models and the timed step are built in
``step_builders.py``; this file measures them and holds the command line.

    python benchmarks/train_step.py --quick                                    # tiny CPU smoke run
    python benchmarks/train_step.py --threads 1 --image_size 96 --batch_size 8 # reduced size on a CPU
    python benchmarks/train_step.py --out train_step.json                      # GPU: 224 px, batch 256, bf16
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from typing import Callable, Dict, List, Optional

import torch

from cadel_modeling.modeling import backbone_family

from step_builders import StepSettings, build, count_flops, make_step  # benchmarks/ is on sys.path

CNN_VARIANTS = ("plain", "light", "faithful")
VIT_VARIANTS = ("plain", "faithful")
FULL_BACKBONES = ("resnet50", "resnext50_32x4d", "vit_base_patch16_224")
QUICK_BACKBONES = ("test_resnet", "test_vit")


# ------------------------------------------------------------------------------------------------ measuring
def _rss_bytes() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_freed_memory():
    """Hand memory freed by earlier runs back to the OS (glibc), so it is not silently reused by the next run."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssPeak:
    """Peak resident-set growth of this process while the block runs, sampled every 2 ms (CPU only; approximate:
    the allocator may still reuse memory freed earlier, and a peak shorter than the period can be missed)."""

    def __enter__(self):
        _release_freed_memory()
        self.start = self.peak = _rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(backbone: str, variant: str, s: StepSettings) -> Dict:
    """Build ``variant``, run ``warmup`` then ``steps`` timed steps; images/s and peak memory of the run."""
    device = torch.device(s.device)
    is_cnn = backbone_family(backbone) != "vit"
    memory_format = torch.channels_last if (s.channels_last and is_cnn) else torch.contiguous_format
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss = RssPeak() if device.type == "cpu" else nullcontext()
    with rss:
        torch.manual_seed(0)
        model = build(backbone, variant, s).to(device=device, memory_format=memory_format).train()
        x = torch.randn(s.batch_size, 3, s.image_size, s.image_size, device=device).contiguous(
            memory_format=memory_format)
        y = torch.randint(0, s.num_classes, (s.batch_size,), device=device)
        step = make_step(model, variant, x, y, s)
        for _ in range(s.warmup):
            step()
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(s.steps):
            step()
        _sync(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    if device.type == "cuda":
        peak_mib, memory_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:
        peak_mib, memory_kind = rss.delta_mib, "cpu_rss_delta_approx"
    params = sum(p.numel() for p in model.parameters())
    del model, step
    return {"img_s": s.batch_size * s.steps / seconds, "step_ms": 1000 * seconds / s.steps,
            "process_cpu_s_per_step": cpu_seconds / s.steps, "params_m": params / 1e6,
            "peak_mib": peak_mib, "memory_kind": memory_kind}


def variants_for(backbone: str, requested: Optional[List[str]] = None) -> List[str]:
    """``plain`` first (the reference of the ratios), then the requested cascades this backbone has: a ViT has one
    kind of exit (reported as ``faithful``), so ``light`` variants are dropped for it."""
    allowed = VIT_VARIANTS if backbone_family(backbone) == "vit" else CNN_VARIANTS
    requested = requested or list(allowed)
    unknown = [v for v in requested if v not in CNN_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; use {', '.join(CNN_VARIANTS)}")
    return ["plain"] + [v for v in requested if v != "plain" and v in allowed]


def benchmark_backbone(backbone: str, s: StepSettings, variants: Optional[List[str]] = None,
                       log: Callable[[str], None] = print) -> List[Dict]:
    """One row per variant: throughput, memory, FLOPs and the ratios against the ``plain`` row (measured first)."""
    variants = variants_for(backbone, variants)
    rows = []
    for variant in variants:
        row = {"backbone": backbone, "variant": variant, "compile": s.compile, **count_flops(backbone, variant, s),
               **measure(backbone, variant, s)}
        row["achieved_tflop_s"] = row["train_gflops"] * row["img_s"] / 1e3
        plain = rows[0] if rows else row
        row["flops_ratio"] = row["train_gflops"] / plain["train_gflops"]
        row["img_s_ratio"] = row["img_s"] / plain["img_s"]
        row["flop_rate_ratio"] = row["achieved_tflop_s"] / plain["achieved_tflop_s"]
        row["cpu_time_img_s_ratio"] = plain["process_cpu_s_per_step"] / row["process_cpu_s_per_step"]
        row["memory_ratio"] = row["peak_mib"] / plain["peak_mib"] if plain["peak_mib"] > 0 else None
        rows.append(row)
        log(f"  {backbone:<22} {variant:<12} {row['img_s']:9.1f} img/s  x{row['img_s_ratio']:.3f}  "
            f"FLOP rate x{row['flop_rate_ratio']:.3f}  peak {row['peak_mib']:.0f} MiB")
    return rows


def format_table(rows: List[Dict]) -> str:
    """A markdown table; ratios are against the plain timm row of the same backbone and settings."""
    lines = ["| backbone | variant | compile | train GFLOPs/img | x FLOPs | img/s | x img/s | TFLOP/s | x FLOP rate "
             "| peak MiB | x memory | host CPU s/step | x img/s by CPU time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['variant']} | {'yes' if r['compile'] else 'no'} | "
                     f"{r['train_gflops']:.3g} | {r['flops_ratio']:.2f} | {r['img_s']:.1f} | {r['img_s_ratio']:.3f} | "
                     f"{r['achieved_tflop_s']:.3g} | {r['flop_rate_ratio']:.3f} | {r['peak_mib']:.0f} | "
                     f"{'-' if r['memory_ratio'] is None else format(r['memory_ratio'], '.2f')} | "
                     f"{r['process_cpu_s_per_step']:.3g} | {r['cpu_time_img_s_ratio']:.3f} |")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment(device: str) -> Dict:
    """Card, versions and date of a result, for the JSON and the README."""
    import timm
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__, "device": device, "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ------------------------------------------------------------------------------------------------ CLI
def settings_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags shared with ``gpu_suite.py``; unset ones take device-dependent defaults in ``resolve_settings``."""
    parser = parser or argparse.ArgumentParser(description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes: a CPU smoke run of every path")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--image_size", type=int, default=None, help="default 224 (quick: 32)")
    parser.add_argument("--batch_size", type=int, default=None, help="CNN batch; default 256 on GPU, 8 on CPU")
    parser.add_argument("--vit_batch_size", type=int, default=None, help="default: half of --batch_size")
    parser.add_argument("--num_classes", type=int, default=None, help="default 1000 (quick: 10)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                        help="auto: bf16 autocast on GPU, fp32 on CPU")
    parser.add_argument("--channels_last", choices=["auto", "true", "false"], default="auto",
                        help="CNN memory format; auto: on for GPU")
    parser.add_argument("--aux_width", type=int, default=None, help="faithful head width; default 2048 (quick: 32)")
    parser.add_argument("--aux_padding", choices=["valid", "same"], default=None,
                        help="faithful head padding; default valid, the original (quick: same, maps are tiny)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=None, help="default 8 on GPU, 2 on CPU (quick: 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 25 on GPU, 5 on CPU (quick: 2)")
    return parser


def resolve_settings(args) -> StepSettings:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")

    def pick(value, quick, gpu, cpu):
        return value if value is not None else quick if args.quick else gpu if on_gpu else cpu

    precision = args.precision if args.precision != "auto" else ("bf16" if on_gpu else "fp32")
    channels_last = on_gpu if args.channels_last == "auto" else args.channels_last == "true"
    if args.threads:
        torch.set_num_threads(args.threads)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return StepSettings(image_size=pick(args.image_size, 32, 224, 224), batch_size=pick(args.batch_size, 4, 256, 8),
                        num_classes=pick(args.num_classes, 10, 1000, 1000), device=device, precision=precision,
                        channels_last=channels_last, aux_width=pick(args.aux_width, 32, 2048, 2048),
                        aux_padding=pick(args.aux_padding, "same", "valid", "valid"),
                        warmup=pick(args.warmup, 1, 8, 2), steps=pick(args.steps, 2, 25, 5))


def vit_settings(s: StepSettings, vit_batch_size: Optional[int]) -> StepSettings:
    return replace(s, batch_size=vit_batch_size or max(1, s.batch_size // 2))


def run_backbones(backbones, s: StepSettings, vit_batch_size: Optional[int] = None,
                  variants: Optional[List[str]] = None, log: Callable[[str], None] = print) -> List[Dict]:
    rows = []
    for backbone in backbones:
        settings = vit_settings(s, vit_batch_size) if backbone_family(backbone) == "vit" else s
        cnn = backbone_family(backbone) != "vit"
        log(f"{backbone}: batch {settings.batch_size}, {settings.image_size} px, {settings.precision}, "
            f"channels_last={settings.channels_last and cnn}, compile={settings.compile}")
        rows += [{**r, "settings": asdict(settings)} for r in benchmark_backbone(backbone, settings, variants, log)]
    return rows


def main(argv=None) -> Dict:
    parser = settings_parser()
    parser.add_argument("--backbones", nargs="+", default=None,
                        help=f"default {' '.join(FULL_BACKBONES)} (quick: {' '.join(QUICK_BACKBONES)})")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="default: plain light faithful")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (GPU; slow to warm up)")
    parser.add_argument("--out", default=None, help="write the rows and the environment to this JSON file")
    args = parser.parse_args(argv)
    s = replace(resolve_settings(args), compile=args.compile)
    backbones = args.backbones or (QUICK_BACKBONES if args.quick else FULL_BACKBONES)
    rows = run_backbones(backbones, s, args.vit_batch_size, args.variants)
    result = {"environment": environment(s.device), "rows": rows}
    print(format_table(rows))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
