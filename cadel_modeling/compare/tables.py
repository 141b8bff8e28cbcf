"""The numbers of a comparison: per-recipe mean and spread over seeds, each recipe's paired difference against the
baseline on the same seed, the markdown table and the plot."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List

from .recipes import BASELINE, LABELS, METRICS


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


def rule_check(runs: List[dict]) -> List[dict]:
    """Per CADEL run whose stage 2 recorded the rule evidence: test top-1 (in %) of the paper's rule (the recipe's
    own row) and of the robust rule (what ``--select_inference_rule`` keeps), and whether the evidence was strong."""
    checks = []
    for run in runs:
        label = LABELS[run["recipe"]]
        robust = run["rows"].get(f"{label} + robust exit rule")
        if robust is not None:
            paper = run["rows"][label]["All"]
            checks.append({"recipe": run["recipe"], "seed": run["seed"], "paper": 100 * paper,
                           "robust": 100 * robust["All"], "difference": 100 * (robust["All"] - paper),
                           "strong": run["rule_evidence"]["strong"],
                           "fraction_ahead": run["rule_evidence"]["fraction_ahead"]})
    return checks


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
