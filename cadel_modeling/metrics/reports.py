"""What a person reads: the results table, a per-class CSV and a per-class accuracy plot."""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .long_tail import FEW_THRESHOLD, GROUPS, MANY_THRESHOLD, ArrayLike, shot_groups

TABLE_COLUMNS = {"All": "accuracy", "Many": "many_accuracy", "Medium": "medium_accuracy", "Few": "few_accuracy",
                 "Top-5": "top5_accuracy", "ECE": "ece", "NLL": "nll", "macro-F1": "macro_f1"}

# The per-class plot's styling, apart from what it shows (which classes where, the values, the group boundaries and
# means, the labels: tests/test_reports.py reads those back from the Figure). Module level: mutmut mutates only
# functions, and no rule depends on a colour (docs/testing.md lists these as excluded from mutation).
PLOT_STYLE = {
    "figure": {"layout": "constrained"},
    "bars": {"fill": True, "color": "tab:blue", "alpha": 0.6},
    "untested": {"color": "tab:red", "clip_on": False},          # the crosses sit on the axis, drawn over it
    "counts": {"color": "tab:orange", "linewidth": 1.5},
    "boundary": {"color": "black", "linewidth": 1},
    "mean": {"colors": "black", "linewidth": 1.2},
    "group_label": {"ha": "center", "va": "top", "fontsize": 9},
    "class_names": {"rotation": 45, "ha": "right"},
    "legend": {"loc": "outside lower center", "fontsize": 9, "frameon": False},
}


def format_number(value, key: str = "accuracy", missing: str = "-") -> str:
    """Accuracies, ECE and macro-F1 in %, NLL in nats with 3 decimals; ``missing`` for None/NaN."""
    if value is None or (isinstance(value, float) and value != value):
        return missing
    return f"{value:.3f}" if key == "nll" else f"{100 * value:.1f}"


def format_table(results: Mapping[str, Mapping]) -> str:
    """One row per named result; accuracies, ECE and macro-F1 in %, NLL in nats, '-' where a value is missing."""
    rows = [["", *TABLE_COLUMNS]]
    rows += [[name, *(format_number(metrics.get(key), key) for key in TABLE_COLUMNS.values())]
             for name, metrics in results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]) for row in rows]
    return "\n".join(lines + ["(% except NLL, in nats)"])


def _check_lengths(per_class_accuracy, class_counts, class_names) -> None:
    lengths = {"per_class_accuracy": len(per_class_accuracy), "class_counts": len(class_counts)}
    if class_names is not None:
        lengths["class_names"] = len(class_names)
    if len(set(lengths.values())) > 1:
        raise ValueError(f"need one entry per class in each input, got lengths {lengths}")


def write_per_class_csv(path, per_class_accuracy: Sequence[float | None], class_counts: ArrayLike,
                        class_names: Sequence[str] | None = None, many_threshold: int = MANY_THRESHOLD,
                        few_threshold: int = FEW_THRESHOLD) -> Path:
    """class_id, class_name, train_count, shot, accuracy (fraction; empty for classes without test images)."""
    counts = np.asarray(class_counts)
    _check_lengths(per_class_accuracy, counts, class_names)
    names = class_names if class_names is not None else [str(i) for i in range(len(counts))]
    groups = shot_groups(counts, many_threshold, few_threshold)
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_id", "class_name", "train_count", "shot", "accuracy"])
        for class_id, (name, count, group, acc) in enumerate(zip(names, counts, groups, per_class_accuracy)):
            writer.writerow([class_id, name, int(count), group, "" if acc is None else repr(float(acc))])
    return path


def plot_per_class_accuracy(path, per_class_accuracy: Sequence[float | None], class_counts: ArrayLike,
                            title: str, class_names: Sequence[str] | None = None,
                            many_threshold: int = MANY_THRESHOLD, few_threshold: int = FEW_THRESHOLD) -> Path:
    """PNG of per-class accuracy (bars) against training-set size (line, log axis), classes sorted by size.

    Dotted lines separate the shot groups, dashed lines mark each group's mean per-class accuracy (the
    many/medium/few numbers); class names label the x axis only for up to 30 classes.
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend and global state alone

    counts = np.asarray(class_counts, dtype=np.float64)
    _check_lengths(per_class_accuracy, counts, class_names)
    order = np.argsort(-counts, kind="stable")
    accuracy = 100 * np.array([np.nan if a is None else a for a in per_class_accuracy], dtype=np.float64)[order]
    sorted_counts = counts[order]
    groups = shot_groups(counts, many_threshold, few_threshold)[order]
    x = np.arange(len(counts))

    fig = Figure(figsize=(12, 5.5), **PLOT_STYLE["figure"])
    ax = fig.add_subplot()
    # One step patch rather than one bar per class (ax.bar takes ~30 s for iNat18's 8142 classes).
    ax.stairs(np.nan_to_num(accuracy), np.arange(len(x) + 1) - 0.5, label="per-class accuracy", **PLOT_STYLE["bars"])
    untested = np.isnan(accuracy)
    if untested.any():
        ax.plot(x[untested], np.zeros(untested.sum()), "x", label="no test images", **PLOT_STYLE["untested"])
    # The top ~15% of both axes is left free for the group labels.
    ax.set(xlim=(-0.5, len(x) - 0.5), ylim=(0, 125), yticks=range(0, 101, 20), ylabel="accuracy (%)", title=title)
    count_ax = ax.twinx()
    count_ax.plot(x, sorted_counts, label="training images", **PLOT_STYLE["counts"])
    positive = sorted_counts[sorted_counts > 0]
    low = positive.min() / 1.5 if positive.size else 0.5
    high = low * (max(sorted_counts.max(), 1.0) / low) ** 1.25
    count_ax.set_yscale("log")
    count_ax.set(ylim=(low, high), ylabel="training images (log scale)")

    titles = {"many": f"Many (>{many_threshold})", "medium": f"Medium ({few_threshold}-{many_threshold})",
              "few": f"Few (<{few_threshold})"}
    start = 0
    for group in GROUPS:
        size = int((groups == group).sum())
        if size == 0:
            continue
        end = start + size
        if start > 0:
            ax.axvline(start - 0.5, linestyle=":", **PLOT_STYLE["boundary"])
        tested = accuracy[start:end][~untested[start:end]]
        if tested.size:
            ax.hlines(tested.mean(), start - 0.5, end - 0.5, linestyles="--", **PLOT_STYLE["mean"])
        summary = f"mean {tested.mean():.1f}%" if tested.size else "no test images"
        ax.text((start + end - 1) / 2, 123, f"{titles[group]}\n{size} classes\n{summary}", **PLOT_STYLE["group_label"])
        start = end

    if len(x) <= 30:
        names = class_names if class_names is not None else [str(i) for i in range(len(x))]
        ax.set_xticks(x, [str(names[i]) for i in order], **PLOT_STYLE["class_names"])
    else:
        ax.set_xlabel("classes, sorted by number of training images")
    handles = ax.get_legend_handles_labels()[0] + count_ax.get_legend_handles_labels()[0]
    fig.legend(handles=handles, ncols=len(handles), **PLOT_STYLE["legend"])  # one row
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
