#!/usr/bin/env python
"""The benchmark suite on one GPU in about 6 minutes (synthetic data), written to one JSON file with the card,
versions and date, and printed as tables.

Sections, in order (the JSON is rewritten after each, so a run cut short keeps what it measured):

1. training step: plain timm against the CADEL cascade (light and faithful heads) for ResNet-50, ResNeXt-50 and
   ViT-B/16 at 224 px, bf16 autocast, channels_last for CNNs, SGD: images/s, FLOPs, FLOP rate, peak memory
   (``train_step.py``);
2. the reference: ``minimal_cascade_bench.py`` (a hand-written cascade) in the same call, when ``--reference`` names
   it and a GPU is there;
3. the real training loop with and without its flags and skips (``step_guard.py``);
4. every paper preset's real stage-1 step at its size and batch, with projected GPU-hours (``preset_smoke.py``);
5. stage-2 tau search, one forward pass against one per tau (``tau_search.py``);
6. the input pipeline: CPU workers against torchvision ``ImageFolder`` (``input_pipeline.py``), and the device-side
   decoding and augmentation of ``--decode_on_gpu`` on the same JPEGs;
7. ``torch.compile`` rows for ResNet-50 (plain and light), only if the time budget leaves room for compiling.

Acceptance (same GPU, same run): ResNet-50 light-head cascade >= 0.8x plain timm ResNet-50 images/s; faithful-head
cascade >= 0.95x the reference's faithful row (the FLOP-rate ratio stays as information). ``--quick`` runs the
same code paths with tiny models on the CPU.

    python benchmarks/gpu_suite.py --reference ref/minimal_cascade_bench.py --out results_gpu.json   # on the GPU
    python benchmarks/gpu_suite.py --quick --out /tmp/quick.json                                    # CPU smoke run
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import input_pipeline  # noqa: E402
import preset_smoke  # noqa: E402
import step_guard  # noqa: E402
import tau_search  # noqa: E402
import train_step  # noqa: E402

LIGHT_TARGET, REFERENCE_TARGET = 0.8, 0.95
# (backbone, variants) of section 1; the first CNN is the one the acceptance checks read.
FULL_PLAN = [("resnet50", ["plain", "light", "faithful"]), ("resnext50_32x4d", ["plain", "light", "faithful"]),
             ("vit_base_patch16_224", ["plain", "faithful"])]
QUICK_PLAN = [("test_resnet", ["plain", "light", "faithful"]), ("test_vit", ["plain", "faithful"])]
QUICK_PRESETS = ["cifar10_lt"]
COMPILE_VARIANTS = ["plain", "light"]


def acceptance(rows: List[Dict], backbone: str, on_gpu: bool, reference: Optional[List[Dict]]) -> Dict:
    """The issue's targets, read from the eager rows of ``backbone`` and the reference run of the same call."""
    by_variant = {r["variant"]: r for r in rows if r["backbone"] == backbone and not r["compile"]}
    light, faithful = by_variant["light"], by_variant["faithful"]
    ref = {r["kind"]: r for r in reference or []}
    faithful_vs_ref = faithful["img_s"] / ref["faithful"]["img_per_s"] if "faithful" in ref else None
    return {"backbone": backbone, "applies": on_gpu and backbone == "resnet50",
            "light_img_s_ratio": light["img_s_ratio"], "light_target": LIGHT_TARGET,
            "light_met": light["img_s_ratio"] >= LIGHT_TARGET,
            "faithful_vs_reference": faithful_vs_ref, "reference_target": REFERENCE_TARGET,
            "faithful_met": None if faithful_vs_ref is None else faithful_vs_ref >= REFERENCE_TARGET,
            "faithful_flop_rate_ratio": faithful["flop_rate_ratio"]}


def format_acceptance(a: Dict) -> str:
    scope = "" if a["applies"] else " (not the acceptance measurement: it needs resnet50 on a GPU)"
    verdict = lambda met: "not measured" if met is None else "met" if met else "NOT met"  # noqa: E731
    ref = "n/a" if a["faithful_vs_reference"] is None else f"{a['faithful_vs_reference']:.3f}"
    return (f"{a['backbone']} light heads: img/s ratio {a['light_img_s_ratio']:.3f} (target >= {a['light_target']}: "
            f"{verdict(a['light_met'])}); faithful heads against the reference's faithful row: {ref} (target >= "
            f"{a['reference_target']}: {verdict(a['faithful_met'])}); faithful FLOP-rate ratio "
            f"{a['faithful_flop_rate_ratio']:.3f}{scope}")


def run_reference(path: str, out_dir: Path) -> Optional[List[Dict]]:
    """``minimal_cascade_bench.py`` in a subprocess (it needs CUDA); its rows, or None."""
    done = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OUT": str(out_dir)})
    print(done.stdout[-2000:])
    if done.returncode != 0:
        print(done.stderr[-2000:])
        return None
    return json.loads((out_dir / "heads.json").read_text())


def device_decode(quick: bool) -> Dict:
    """``--decode_on_gpu``'s batched decode + augmentation on the same kind of JPEGs as the input-pipeline rows."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from cadel_modeling.data.gpu_augment import DeviceAugment
    n, batch, size = (16, 8, 32) if quick else (1024, 128, 224)
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(min(n, 64)):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        encoded.append(buf.getvalue())
    encoded = (encoded * (n // len(encoded) + 1))[:n]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    augment = DeviceAugment(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    batches = [{"encoded": encoded[i:i + batch], "rows": list(range(i, i + batch))} for i in range(0, n, batch)]
    augment(batches[0], 1, device)  # warm-up (nvJPEG handles, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches:
        augment(b, 1, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"device": str(device), "images": n, "batch": batch, "image_size": size,
            "img_s": round(n / (time.perf_counter() - start), 1)}


def main(argv=None) -> Dict:
    parser = train_step.settings_parser()
    tau_search.add_arguments(parser)
    parser.add_argument("--out", default="results_gpu.json", help="the JSON file of results")
    parser.add_argument("--reference", default=None, help="minimal_cascade_bench.py, run in the same call (GPU)")
    parser.add_argument("--budget_s", type=float, default=420.0,
                        help="wall-time budget: the compile rows are skipped when under --compile_reserve_s is left")
    parser.add_argument("--compile", choices=["auto", "yes", "no"], default="auto",
                        help="compile rows: auto = on a GPU, not --quick, when the budget allows")
    parser.add_argument("--compile_reserve_s", type=float, default=120.0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    s = train_step.resolve_settings(args)
    on_gpu = s.device.startswith("cuda")
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    result = {"environment": {**train_step.environment(s.device), "command": " ".join(sys.argv)},
              "settings": asdict(s), "train_step": [], "reference": None, "step_guard": None, "preset_smoke": [],
              "tau_search": None, "acceptance": None}
    out = Path(args.out)

    def save():
        result["wall_s"] = time.perf_counter() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))

    print(f"# training step ({result['environment'].get('device_name', s.device)})")
    for backbone, variants in plan:
        result["train_step"] += train_step.run_backbones([backbone], s, args.vit_batch_size, variants)
        save()
    if args.reference and on_gpu:
        print("# reference: minimal_cascade_bench.py")
        result["reference"] = run_reference(args.reference, out.parent)
    result["acceptance"] = acceptance(result["train_step"], plan[0][0], on_gpu, result["reference"])
    save()

    print("# the real training loop, with and without its flags and skips")
    result["step_guard"] = step_guard.main(["--quick"] if args.quick else [])
    save()

    print("# every paper preset's stage-1 step")
    result["preset_smoke"] = preset_smoke.main(["--quick", "--presets", *QUICK_PRESETS] if args.quick else
                                               ["--steps", "6", "--warmup", "2"])
    save()

    print("# stage-2 tau search")
    result["tau_search"] = tau_search.run_tau_benchmark(**tau_search.settings_from_args(args))
    save()

    print("# input pipeline (CPU decode + augmentation, against torchvision ImageFolder)")
    pipeline_args = ["--quick"] if args.quick else ["--num_images", "1000", "--repeats", "2"]
    result["input_pipeline"] = input_pipeline.main(
        pipeline_args + ["--output_json", str(out.with_name(out.stem + "_input_pipeline.json"))])
    print("# device-side decoding and augmentation (--decode_on_gpu)")
    result["device_decode"] = device_decode(args.quick)
    save()

    left = args.budget_s - (time.perf_counter() - t0)
    compile_wanted = args.compile == "yes" or (args.compile == "auto" and on_gpu and not args.quick)
    if compile_wanted and (args.compile == "yes" or left > args.compile_reserve_s):
        print("# torch.compile")
        try:
            result["train_step"] += train_step.run_backbones([plan[0][0]], replace(s, compile=True),
                                                             args.vit_batch_size, COMPILE_VARIANTS)
        except Exception as exc:  # optional rows: a compiler failure must not lose the tables measured so far
            result["compile_error"] = f"{type(exc).__name__}: {exc}"
    elif compile_wanted:
        result["compile_skipped"] = f"{left:.0f} s of the {args.budget_s:.0f} s budget left"
    save()

    print("\n## Training step (ratios against plain timm, same batch, precision, memory format, optimizer)\n")
    print(train_step.format_table(result["train_step"]))
    print("\n## Stage-2 tau search\n")
    print(tau_search.format_table(result["tau_search"]))
    g = result["step_guard"]
    print(f"\n## The real loop\n\nguarded {g['guarded_img_s']} img/s, without flags {g['unguarded_img_s']} img/s: "
          f"x{g['ratio']:.3f}; flag reads that waited for the device: {g['flag_waits']}")
    print("\n## Presets\n\n| preset | img/s | peak GiB | projected GPU-hours |\n|---|---|---|---|")
    for r in result["preset_smoke"]:
        print(f"| {r['preset']} | {r['img_s']} | {r['peak_gib']} | {r['projected_gpu_hours']} |")
    d = result["device_decode"]
    print(f"\n## Decoding\n\ndevice-side decode + augmentation on {d['device']}: {d['img_s']} img/s")
    print("\n## Acceptance\n")
    print(format_acceptance(result["acceptance"]))
    for key in ("compile_skipped", "compile_error"):
        if key in result:
            print(f"\ntorch.compile rows not measured ({key}): {result[key]}")
    print(f"\nwall time {result['wall_s']:.0f} s; results in {out}")
    return result


if __name__ == "__main__":
    main()
