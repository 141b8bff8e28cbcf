"""Long-tailed classification metrics, computed by the `evaluate` module in ``long_tail_classification/`` (shipped with
the package and loaded from its folder, no Hub access)."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

METRIC_PATH = Path(__file__).resolve().parent / "long_tail_classification"
MANY_THRESHOLD = 100
FEW_THRESHOLD = 20
GROUPS = ("many", "medium", "few")

ArrayLike = torch.Tensor | np.ndarray | Sequence


@functools.cache
def load_metric():
    """Load the bundled metric module from its folder (no Hub access), once per process."""
    # Imported here, not at module level: a process started in the repository root finds the top-level evaluate.py
    # script first, and that script only swaps itself for the real package once it is imported.
    import evaluate

    if not hasattr(evaluate, "load"):
        raise ImportError(f"`import evaluate` gave {getattr(evaluate, '__file__', evaluate)!r}, not the Hugging Face "
                          "`evaluate` package; install it (pip install evaluate) and do not put a folder holding "
                          "an evaluate.py script ahead of it on sys.path")
    # Not keep_in_memory: datasets then fingerprints the in-memory table by pickling every score (8 s for iNat18),
    # while a memory-mapped cache file is hashed by path.
    return evaluate.load(str(METRIC_PATH))


def shot_groups(class_counts: ArrayLike, many_threshold: int = MANY_THRESHOLD,
                few_threshold: int = FEW_THRESHOLD) -> np.ndarray:
    """'many' (> many_threshold training images), 'few' (< few_threshold) or 'medium' per class, as in shot_acc."""
    counts = np.asarray(class_counts)
    return np.where(counts > many_threshold, "many", np.where(counts < few_threshold, "few", "medium"))


def _to_numpy(values: ArrayLike, tensor_dtype: torch.dtype) -> np.ndarray:
    """Tensors (any device, bf16 included) to numpy; arrays and lists pass through for the module to validate."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", tensor_dtype).numpy()
    return np.asarray(values)


def compute_long_tail_metrics(scores: ArrayLike, labels: ArrayLike, class_counts: ArrayLike,
                              many_threshold: int = MANY_THRESHOLD, few_threshold: int = FEW_THRESHOLD,
                              ece_bins: int = 15) -> dict:
    """All metrics of the module for [N, C] class scores (logits) and [N] labels; groups use TRAINING counts."""
    return load_metric().compute(
        predictions=_to_numpy(scores, torch.float32), references=_to_numpy(labels, torch.int64),
        class_counts=_to_numpy(class_counts, torch.int64), many_threshold=many_threshold, few_threshold=few_threshold,
        ece_bins=ece_bins)




def top1(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose highest score is the label (NaN for no rows)."""
    return (scores.argmax(-1) == labels).float().mean().item() if len(labels) else float("nan")


def group_accuracies(scores: torch.Tensor, labels: torch.Tensor, class_counts: ArrayLike) -> dict:
    """Many / medium / few accuracy (mean per-class recall of each shot group; None for an empty group), computed
    directly, for per-epoch logging (the full metric module runs at evaluation)."""
    counts = np.asarray(class_counts)
    hits = torch.bincount(labels[scores.argmax(-1) == labels], minlength=len(counts)).numpy()
    seen = torch.bincount(labels, minlength=len(counts)).numpy()
    per_class = np.where(seen > 0, hits / np.maximum(seen, 1), np.nan)
    groups = shot_groups(counts)
    out = {}
    for group in GROUPS:
        values = per_class[(groups == group) & (seen > 0)]
        out[group] = float(values.mean()) if values.size else None
    return out
