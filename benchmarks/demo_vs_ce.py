#!/usr/bin/env python
"""Fashion-MNIST-LT demo numbers: CADEL against a plain cross-entropy baseline, same backbone, epochs and data.

The baseline is the same model with no auxiliary exits, no mixup and unit loss weights (``--exit_stages "[]"
--mixup_alpha 0 --gamma 0 --base_weight 1``), i.e. a timm backbone with a cosine classifier trained with CE.
Both get the same stage 2 (logit adjustment, tau chosen on the validation split). Each run is a real
``train_stage1.py`` + ``train_stage2.py`` subprocess; wall times are recorded too (the end-to-end demo time).

    python benchmarks/demo_vs_ce.py                      # the README's table (preset fashion_mnist_lt)
    python benchmarks/demo_vs_ce.py --epochs 2 --quick   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (run folder, extra flags)
    "CADEL (per_sample)": ("cadel_per_sample", []),
    "CADEL (batch_scalar_legacy)": ("cadel_legacy", ["--weight_mode", "batch_scalar_legacy"]),
    "plain CE": ("plain_ce", ["--exit_stages", "[]", "--mixup_alpha", "0", "--gamma", "0", "--base_weight", "1"]),
}


def run(cmd, log):
    t0 = time.time()
    with open(log, "a") as fh:
        subprocess.run(cmd, cwd=REPO, check=True, stdout=fh, stderr=subprocess.STDOUT)
    return time.time() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fashion_mnist_lt")
    parser.add_argument("--out", default="runs/benchmark_demo_vs_ce")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="only the per_sample CADEL run and plain CE")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, (folder, extra) in VARIANTS.items():
        if args.quick and "legacy" in name:
            continue
        run_dir = out / folder
        common = ["--config", args.config, "--output_dir", str(run_dir), "--overwrite_output_dir", "true",
                  "--seed", str(args.seed)] + (["--epochs", str(args.epochs)] if args.epochs else [])
        log = out / "log.txt"
        t1 = run([sys.executable, "train_stage1.py"] + common + extra, log)
        t2 = run([sys.executable, "train_stage2.py", "--stage1_dir", str(run_dir)], log)
        res = json.loads((run_dir / "stage2_logit_adjustment" / "stage2_results.json").read_text())
        test = res["test"]
        raw = next(v for k, v in test.items() if k.endswith("tau=0") and not k.startswith("exit"))
        adj = next((v for k, v in test.items() if not k.startswith("exit") and not k.endswith("tau=0")), raw)
        rows[name] = {"tau": res["tau"], "stage1": raw, "stage2": adj, "stage1_s": round(t1, 1),
                      "stage2_s": round(t2, 1), "command": " ".join(["train_stage1.py"] + common + extra)}
    lines = ["| model | stage | tau | All | Many | Medium | Few | ECE |", "|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for name, r in rows.items():
        for stage, tau in (("stage1", 0.0), ("stage2", r["tau"])):
            m = r[stage]
            lines.append(f"| {name} | {stage} | {tau:g} | {pct(m['accuracy'])} | {pct(m['many_accuracy'])} | "
                         f"{pct(m['medium_accuracy'])} | {pct(m['few_accuracy'])} | {pct(m['ece'])} |")
    table = "\n".join(lines)
    print(table)
    for name, r in rows.items():
        print(f"{name}: stage 1 {r['stage1_s']} s, stage 2 {r['stage2_s']} s; {r['command']}")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
