#!/usr/bin/env python
"""CADEL against strong long-tail baselines in one pipeline, over several seeds: mean +- std per recipe.

Every recipe trains the same backbone on the same data with the same augmentation (mixup included), schedule and
epochs; every choice (best epoch, tau, exit weights) is made on the validation split; the test split is scored once.
Each run is a real ``cadel_modeling.train_stage1`` + ``train_stage2`` subprocess. Finished runs are kept, so an
interrupted grid resumes where it stopped (a half-trained run resumes from its checkpoint).

    python benchmarks/lt_compare.py                                   # the default grid: Fashion-MNIST-LT, IF 100
    python benchmarks/lt_compare.py --imb_factor 10                   # the second grid
    python benchmarks/lt_compare.py --recipes ce cadel --seeds 0 1 -- --dataset imagefolder --data_dir DIR
    python benchmarks/lt_compare.py --quick                           # a smoke run (tests)

Flags after ``--`` go to stage 1 of every run. Writes ``<out>/results.json`` (every run and the aggregates),
``<out>/table.md`` and ``<out>/lt_compare.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SINGLE_EXIT = ["--exit_stages", "[]", "--gamma", "0", "--base_weight", "1"]  # one exit, unit weights: the plain loss
# recipe -> (stage-1 flags, what it is)
RECIPES = {
    "ce": (SINGLE_EXIT + ["--base_loss", "ce"], "cross-entropy, one exit"),
    "la_loss": (SINGLE_EXIT + ["--base_loss", "logit_adjusted"], "logit-adjusted loss (Menon et al. 2021, tau 1)"),
    "balanced_softmax": (SINGLE_EXIT + ["--base_loss", "balanced_softmax"], "Balanced Softmax (Ren et al. 2020)"),
    "cadel": ([], "CADEL, per-sample cascade weights (as intended)"),
    "cadel_legacy": (["--weight_mode", "batch_scalar_legacy"], "CADEL, the original CNN code's batch-scalar weights"),
    "cadel_balanced": (["--base_loss", "balanced_softmax"],
                       "CADEL with Balanced Softmax as base loss (beyond the paper)"),
    "balanced_bce": (["--exit_blocks", "[]", "--gamma", "0", "--base_weight", "1", "--base_loss", "balanced_bce"],
                     "LiVT's balanced BCE, one exit (ViT backbones)"),
}
DEFAULT_RECIPES = ["ce", "la_loss", "balanced_softmax", "cadel", "cadel_legacy", "cadel_balanced"]
BASELINE = "CE + post-hoc LA"   # the recipe every other one is compared with, seed by seed
METRICS = {"All": "accuracy", "Many": "many_accuracy", "Medium": "medium_accuracy", "Few": "few_accuracy",
           "ECE": "ece"}


def rows_of(recipe: str) -> List[tuple]:
    """(row label, which score of a run): every recipe reports its stage-2 result (tau chosen on val, 0 included);
    CE also its raw stage-1 scores; the CADEL recipes also their exit weights chosen on val."""
    label = {"ce": "CE + post-hoc LA", "la_loss": "LA loss", "balanced_softmax": "Balanced Softmax",
             "cadel": "CADEL", "cadel_legacy": "CADEL, legacy weighting", "cadel_balanced": "CADEL + Balanced Softmax",
             "balanced_bce": "Balanced BCE"}[recipe]
    rows = [(label, "stage2")]
    if recipe == "ce":
        rows.insert(0, ("CE", "stage1"))
    if recipe.startswith("cadel"):
        rows.append((f"{label} + exit weights on val", "ensemble"))
    return rows


def pick(test: Dict[str, dict], which: str, tau: float) -> dict:
    """The test metrics of one score variant of a stage-2 result."""
    if which == "ensemble":
        return next(v for k, v in test.items() if k.startswith("learned exit weights"))
    suffix = "tau=0" if which == "stage1" else f"tau={tau:g}"
    main = [k for k in test if not k.startswith(("exit ", "learned", "sum")) and k.endswith(suffix)]
    return test[main[0]]


def run_logged(cmd: List[str], log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        done = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return time.time() - t0


def train(run_dir: Path, recipe: str, seed: int, base: List[str], extra: List[str], log: Path) -> dict:
    """Stage 1 + stage 2 of one run; a finished run is read back, a half-trained one resumed."""
    record = run_dir / "lt_compare_run.json"
    if record.is_file():
        return json.loads(record.read_text())
    stage1 = [sys.executable, "-m", "cadel_modeling.train_stage1"] + base + RECIPES[recipe][0] + extra + \
        ["--seed", str(seed), "--output_dir", str(run_dir)]
    resume = ["--resume_from_checkpoint", "latest"] if (run_dir / "checkpoints").is_dir() else \
        (["--overwrite_output_dir"] if run_dir.exists() else [])
    t1 = run_logged(stage1 + resume, log) if not (run_dir / "stage1_summary.json").is_file() else 0.0
    t2 = run_logged([sys.executable, "-m", "cadel_modeling.train_stage2", "--stage1_dir", str(run_dir)], log)
    result = json.loads((run_dir / "stage2_logit_adjustment" / "stage2_results.json").read_text())
    out = {"recipe": recipe, "seed": seed, "tau": result["tau"], "stage1_s": round(t1, 1), "stage2_s": round(t2, 1),
           "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(stage1)),
           "ensemble": {k: result["ensemble"][k] for k in ("weights", "tau", "source")} if result["ensemble"] else None,
           "rows": {label: {k: pick(result["test"], which, result["tau"])[key] for k, key in METRICS.items()}
                    for label, which in rows_of(recipe)}}
    record.write_text(json.dumps(out, indent=2))
    return out


def aggregate(runs: List[dict]) -> Dict[str, dict]:
    """row label -> metric -> {mean, std, n, values} over seeds (sample std over the seeds' values, in %)."""
    table: Dict[str, Dict[str, list]] = {}
    for run in runs:
        for label, metrics in run["rows"].items():
            for name, value in metrics.items():  # None: a shot group without classes in this data
                table.setdefault(label, {}).setdefault(name, []).extend([] if value is None else [100 * value])
    return {label: {name: {"mean": statistics.fmean(v) if v else None,
                           "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v), "values": v}
                    for name, v in metrics.items()}
            for label, metrics in table.items()}


def paired(runs: List[dict], baseline: str = BASELINE) -> Dict[str, dict]:
    """row label -> test top-1 minus the baseline's on the same seed (same data split and initialisation), in
    points: {mean, std, n, wins, values}. Pairing removes the seed-to-seed variation the two recipes share, which
    the per-recipe spreads still contain. Empty when the baseline is not in the grid."""
    base = {r["seed"]: r["rows"][baseline]["All"] for r in runs if baseline in r["rows"]}
    diffs: Dict[str, list] = {}
    for run in runs:
        if run["seed"] in base:
            for label, metrics in run["rows"].items():
                diffs.setdefault(label, []).append(100 * (metrics["All"] - base[run["seed"]]))
    return {label: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v),
                    "wins": sum(d > 0 for d in v), "values": v}
            for label, v in diffs.items() if label != baseline}


def markdown(agg: Dict[str, dict], diffs: Dict[str, dict]) -> str:
    extra = [f"Δ All vs {BASELINE} (paired)"] if diffs else []
    lines = ["| recipe | " + " | ".join(list(METRICS) + extra) + " |", "|---|" + "---|" * (len(METRICS) + len(extra))]
    for label, metrics in agg.items():
        cells = ["–" if metrics[m]["mean"] is None else f"{metrics[m]['mean']:.1f} ± {metrics[m]['std']:.1f}"
                 for m in METRICS]
        if diffs:
            d = diffs.get(label)
            cells.append("baseline" if d is None else
                         f"{d['mean']:+.1f} ± {d['std']:.1f} ({d['wins']}/{d['n']} seeds ahead)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(agg: Dict[str, dict], diffs: Dict[str, dict], path: Path, title: str) -> None:
    """Top: mean top-1 per recipe with error bars (std over seeds), overall and per shot group. Bottom (when the
    baseline ran): each recipe minus the baseline on the same seed, one dot per seed, mean ± std; differences of a
    point or two are invisible on the top panel's 0-100 scale."""
    import numpy as np
    from matplotlib.figure import Figure

    labels = list(agg)
    groups = ["All", "Many", "Medium", "Few"]
    fig = Figure(figsize=(12, 8 if diffs else 5), layout="constrained")
    axes = fig.subplots(2 if diffs else 1, 1, sharex=True, height_ratios=[3, 2] if diffs else None, squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / len(groups)
    x = np.arange(len(labels))
    for g, group in enumerate(groups):
        means = [agg[label][group]["mean"] or 0.0 for label in labels]
        stds = [agg[label][group]["std"] for label in labels]
        ax.bar(x + (g - (len(groups) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=group)
    ax.set(ylabel="test top-1 (%), mean ± std over seeds", title=title, ylim=(0, 100))
    ax.legend(ncols=len(groups), loc="upper left")
    if diffs:
        ax = axes[1, 0]
        ax.axhline(0.0, color="grey", linewidth=1)
        for k, label in enumerate(labels):
            d = diffs.get(label)
            if d is None:
                continue
            ax.scatter([k] * len(d["values"]), d["values"], color="tab:blue", alpha=0.5, s=18)
            ax.errorbar([k], [d["mean"]], yerr=[d["std"]], fmt="o", color="black", capsize=4)
        ax.set(ylabel=f"All minus {BASELINE}\n(same seed, points)")
    axes[-1, 0].set_xticks(x, labels, rotation=25, ha="right")
    fig.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fashion_mnist_lt", help="the preset (or YAML) every run starts from")
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imb_factor", type=float, default=100.0)
    parser.add_argument("--out", default=None, help="default runs/lt_compare/<config>_if<IF>_e<epochs>")
    parser.add_argument("--results", default=None, help="also copy results.json here (e.g. benchmarks/results/...)")
    parser.add_argument("--quick", action="store_true", help="tiny models and data, 2 epochs, 1 seed (tests)")
    args = parser.parse_args(argv)
    base = ["--config", args.config, "--epochs", str(args.epochs), "--imb_factor", f"{args.imb_factor:g}"]
    if args.quick:
        args.seeds, args.epochs, args.imb_factor = args.seeds[:1], 2, 10.0
        base = ["--config", args.config, "--epochs", "2", "--imb_factor", "10", "--n_max", "60", "--val_per_class",
                "10", "--backbone", "test_resnet", "--batch_size", "16", "--eval_batch_size", "100"]
    tag = f"{Path(args.config).stem}_if{args.imb_factor:g}_e{args.epochs}" + ("_quick" if args.quick else "")
    out = Path(args.out or REPO / "runs" / "lt_compare" / tag)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runs = []
    started = time.time()
    for seed in args.seeds:  # seed-major: a grid stopped early still compares every recipe on the same seeds
        for recipe in args.recipes:
            run = train(out / recipe / f"seed{seed}", recipe, seed, base, extra, out / "log.txt")
            runs.append(run)
            print(f"{recipe} seed {seed}: " + ", ".join(f"{label} {100 * r['All']:.1f}"
                                                         for label, r in run["rows"].items()), flush=True)
    agg, diffs = aggregate(runs), paired(runs)
    table = markdown(agg, diffs)
    cpu_s = sum(r["stage1_s"] + r["stage2_s"] for r in runs)
    how = (f"`python benchmarks/lt_compare.py {' '.join(argv)}`: {args.config}, IF {args.imb_factor:g}, "
           f"{args.epochs} epochs, seeds {args.seeds}; best epoch, tau and exit weights chosen on val; test split; "
           f"{len(runs)} runs, {cpu_s / 60:.0f} min of stage 1 + stage 2 wall time summed over the runs")
    result = {"how": how, "recipes": {r: RECIPES[r][1] for r in args.recipes}, "extra_stage1_flags": extra,
              "aggregate": agg, "paired_vs_baseline": {"baseline": BASELINE, "All": diffs}, "runs": runs,
              "wall_s": round(time.time() - started, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(table + "\n\n" + how + "\n")
    plot(agg, diffs, out / "lt_compare.png", f"{args.config}, IF {args.imb_factor:g}, {args.epochs} epochs, "
                                      f"{len(args.seeds)} seeds")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(result, indent=2))
    print(table + "\n\n" + how)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
