#!/usr/bin/env python
"""The benchmark suite on one GPU in under 5 minutes (synthetic data), written to one JSON file with the card,
versions and date, and printed as tables.

Sections, in order (the JSON is rewritten after each, so a run cut short keeps what it measured):

1. training step: plain timm against the CADEL cascade (light and faithful heads) for ResNet-50 (plus the light
   cascade with ``training.py``'s per-step host sync), ResNeXt-50 and ViT-B/16 at 224 px, bf16 autocast,
   channels_last for CNNs, SGD: images/s, FLOPs, achieved FLOP rate and peak memory (``train_step.py``);
2. stage-2 tau search, one forward pass against one per tau (``tau_search.py``);
3. the input pipeline against torchvision ``ImageFolder`` (``input_pipeline.py``, CPU decode + augmentation);
4. ``torch.compile`` rows for ResNet-50 (plain and light), only if the time budget leaves room for compiling.

It ends with the issue's acceptance checks on ResNet-50: light-head images/s >= 80% of plain timm's, and faithful-head
achieved FLOP rate >= 80% of plain timm's. ``--quick`` runs the same code paths with tiny models on the CPU.

    python benchmarks/gpu_suite.py --out results_gpu.json          # on the GPU machine
    python benchmarks/gpu_suite.py --quick --out /tmp/quick.json   # CPU smoke run (about a minute)
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import input_pipeline  # noqa: E402
import tau_search  # noqa: E402
import train_step  # noqa: E402

ACCEPTANCE_TARGET = 0.8
# (backbone, variants) of section 1; the first CNN is the one the acceptance checks read.
FULL_PLAN = [("resnet50", ["plain", "light", "faithful", "light+sync"]),
             ("resnext50_32x4d", ["plain", "light", "faithful"]),
             ("vit_base_patch16_224", ["plain", "faithful"])]
QUICK_PLAN = [("test_resnet", ["plain", "light", "faithful", "light+sync"]), ("test_vit", ["plain", "faithful"])]
COMPILE_VARIANTS = ["plain", "light"]


def acceptance(rows: List[Dict], backbone: str, on_gpu: bool) -> Dict:
    """The issue's two targets, read from the eager rows of ``backbone``."""
    by_variant = {r["variant"]: r for r in rows if r["backbone"] == backbone and not r["compile"]}
    light, faithful = by_variant["light"], by_variant["faithful"]
    return {"backbone": backbone, "target": ACCEPTANCE_TARGET,
            "applies": on_gpu and backbone == "resnet50",
            "light_img_s_ratio": light["img_s_ratio"],
            "light_img_s_ratio_met": light["img_s_ratio"] >= ACCEPTANCE_TARGET,
            "faithful_flop_rate_ratio": faithful["flop_rate_ratio"],
            "faithful_flop_rate_ratio_met": faithful["flop_rate_ratio"] >= ACCEPTANCE_TARGET}


def format_acceptance(a: Dict) -> str:
    scope = "" if a["applies"] else " (not the acceptance measurement: it needs resnet50 on a GPU)"
    verdict = lambda met: "met" if met else "NOT met"  # noqa: E731
    return (f"{a['backbone']} light heads: img/s ratio {a['light_img_s_ratio']:.3f} "
            f"(target >= {a['target']}: {verdict(a['light_img_s_ratio_met'])}); faithful heads: FLOP-rate ratio "
            f"{a['faithful_flop_rate_ratio']:.3f} (target >= {a['target']}: "
            f"{verdict(a['faithful_flop_rate_ratio_met'])}){scope}")


def main(argv=None) -> Dict:
    parser = train_step.settings_parser()
    tau_search.add_arguments(parser)
    parser.add_argument("--out", default="results_gpu.json", help="the JSON file of results")
    parser.add_argument("--budget_s", type=float, default=285.0,
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
              "settings": asdict(s), "train_step": [], "tau_search": None, "acceptance": None}
    out = Path(args.out)

    def save():
        result["wall_s"] = time.perf_counter() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))

    print(f"# training step ({result['environment'].get('device_name', s.device)})")
    for backbone, variants in plan:
        result["train_step"] += train_step.run_backbones([backbone], s, args.vit_batch_size, variants)
        save()
    result["acceptance"] = acceptance(result["train_step"], plan[0][0], on_gpu)
    save()

    print("# stage-2 tau search")
    result["tau_search"] = tau_search.run_tau_benchmark(**tau_search.settings_from_args(args))
    save()

    print("# input pipeline (CPU decode + augmentation, against torchvision ImageFolder)")
    pipeline_args = ["--quick"] if args.quick else ["--num_images", "1000", "--repeats", "2"]
    result["input_pipeline"] = input_pipeline.main(
        pipeline_args + ["--output_json", str(out.with_name(out.stem + "_input_pipeline.json"))])
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
    print("\n## Acceptance\n")
    print(format_acceptance(result["acceptance"]))
    for key in ("compile_skipped", "compile_error"):
        if key in result:
            print(f"\ntorch.compile rows not measured ({key}): {result[key]}")
    print(f"\nwall time {result['wall_s']:.0f} s; results in {out}")
    return result


if __name__ == "__main__":
    main()
