"""Long-tailed classification metrics: top-1/top-5, many/medium/few-shot accuracy, macro-F1, ECE and NLL.

Self-contained `evaluate` module (evaluate copies this file into its cache, so it must not import the
`cadel_modeling` package). Load it offline with `evaluate.load("<path to this folder>")`.
"""

import datasets
import numpy as np
import pyarrow as pa

import evaluate

_DESCRIPTION = """\
Metrics for long-tailed image classification from per-sample class scores (logits; softmax is applied here).

Shot groups follow `shot_acc` of Kang et al. (classifier-balancing), as used by OLTR, cRT, MiSLAS and CADEL: a class is
*many*-shot if its TRAINING count is > many_threshold (100), *few*-shot if it is < few_threshold (20) and *medium*-shot
otherwise (20-100 inclusive). A group's accuracy is the mean of its classes' per-class accuracies (classes without a
test sample are skipped); `accuracy` is pooled over samples. ECE uses equal-width bins over the max-softmax confidence
with (lower, upper] bins, as in Guo et al. and MiSLAS. All values are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of `list` of `float`): class scores (logits) per sample, shape [N, C].
    references (`list` of `int`): true class index per sample, in [0, C).
    class_counts (`list` of `int`): number of TRAINING images per class, length C; defines the shot groups.
    many_threshold (`int`, defaults to 100): classes with more training images are many-shot.
    few_threshold (`int`, defaults to 20): classes with fewer training images are few-shot.
    ece_bins (`int`, defaults to 15): number of equal-width confidence bins for ECE.
Returns:
    accuracy, top5_accuracy (top-min(5, C)), many_accuracy, medium_accuracy, few_accuracy (None when the group has no
    class with a test sample), per_class_accuracy (list, None for classes without a test sample), macro_f1 (over the
    labels present in references or predictions, like sklearn), ece, nll, num_samples, num_many, num_medium, num_few
    (number of classes in each group).
Examples:
    >>> metric = evaluate.load("cadel_modeling/metrics/long_tail_classification")
    >>> out = metric.compute(predictions=[[2.0, 0.0], [0.0, 1.0]], references=[0, 0], class_counts=[150, 10])
    >>> out["accuracy"], out["many_accuracy"], out["few_accuracy"]
    (0.5, 0.5, None)
"""

_CITATION = """\
@inproceedings{liu2019large,
  title={Large-Scale Long-Tailed Recognition in an Open World},
  author={Liu, Ziwei and Miao, Zhongqi and Zhan, Xiaohang and Wang, Jiayun and Gong, Boqing and Yu, Stella X.},
  booktitle={CVPR},
  year={2019}
}
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={ICML},
  year={2017}
}
"""


def _as_batch(predictions, references):
    """Scores as a float32 [N, C] array (the Arrow storage type) and labels as N integers, or a ValueError."""
    try:
        scores = np.asarray(predictions, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(
            "predictions must form a rectangular [num_samples, num_classes] array of class scores; rows (or batches) "
            "have different numbers of scores or are not numbers."
        ) from None
    labels = np.asarray(references)
    if scores.ndim != 2:
        raise ValueError(
            f"predictions must be a [num_samples, num_classes] array of class scores, got shape {scores.shape}."
        )
    if labels.shape != (scores.shape[0],) or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"references must be {scores.shape[0]} integer class indices (one per prediction row), "
            f"got shape {labels.shape} and dtype {labels.dtype}."
        )
    return scores, labels.astype(np.int64)


def _validated_inputs(predictions, references, class_counts, many_threshold=100, few_threshold=20, ece_bins=15):
    scores, labels = _as_batch(predictions, references)
    counts = np.asarray(class_counts, dtype=np.float64)
    if scores.size == 0:
        raise ValueError(f"predictions must hold at least one sample and one class, got shape {scores.shape}.")
    if not np.isfinite(scores).all():
        raise ValueError("predictions contain NaN or inf; check the model outputs before computing metrics.")
    num_classes = scores.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"references must lie in [0, {num_classes}) for {num_classes} score columns, "
            f"got values in [{labels.min()}, {labels.max()}]."
        )
    if counts.ndim != 1 or counts.shape[0] != num_classes:
        raise ValueError(
            f"class_counts must hold one training count per class: expected length {num_classes} "
            f"(the number of score columns), got shape {counts.shape}."
        )
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("class_counts must be finite, non-negative training-image counts.")
    if few_threshold > many_threshold:
        raise ValueError(f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold}).")
    if int(ece_bins) != ece_bins or ece_bins < 1:
        raise ValueError(f"ece_bins must be a positive integer, got {ece_bins}.")
    return scores, labels, counts


def _row_statistics(scores: np.ndarray, labels: np.ndarray, block_size: int = 1 << 22):
    """Per sample: predicted class, max-softmax confidence, NLL and 0-based rank of the true class.

    Rows are processed in blocks of about `block_size` scores so temporaries stay small (iNat18: 24k x 8142). Ties in
    the rank go to the lower class index, like argmax, so rank 0 <=> the prediction is correct.
    """
    num_samples, num_classes = scores.shape
    predicted = np.empty(num_samples, dtype=np.int64)
    confidence, nll = np.empty(num_samples), np.empty(num_samples)
    rank = np.empty(num_samples, dtype=np.int64)
    class_ids = np.arange(num_classes)
    step = max(1, block_size // num_classes)
    for start in range(0, num_samples, step):
        rows = slice(start, start + step)
        block, block_labels = scores[rows], labels[rows]
        row_max = block.max(axis=1, keepdims=True)
        log_partition = np.log(np.exp(block - row_max).sum(axis=1, dtype=np.float64)) + row_max[:, 0]
        label_scores = np.take_along_axis(block, block_labels[:, None], axis=1)
        predicted[rows] = block.argmax(axis=1)
        confidence[rows] = np.exp(row_max[:, 0] - log_partition)
        nll[rows] = log_partition - label_scores[:, 0]
        rank[rows] = (block > label_scores).sum(axis=1) + (
            (block == label_scores) & (class_ids < block_labels[:, None])).sum(axis=1)
    return predicted, confidence, nll, rank


def _expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, num_bins: int) -> float:
    bin_edges = np.linspace(0.0, 1.0, num_bins + 1)
    # searchsorted(side="left") puts a confidence c in bin i when edges[i] < c <= edges[i + 1].
    bin_ids = np.clip(np.searchsorted(bin_edges, confidences, side="left") - 1, 0, num_bins - 1)
    confidence_sums = np.bincount(bin_ids, weights=confidences, minlength=num_bins)
    correct_sums = np.bincount(bin_ids, weights=correct, minlength=num_bins)
    return float(np.abs(confidence_sums - correct_sums).sum() / len(confidences))


def _mean_or_none(values: np.ndarray):
    return float(values.mean()) if values.size else None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LongTailClassification(evaluate.Metric):
    def _info(self):
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://github.com/facebookresearch/classifier-balancing"],
        )
        # MetricInfo rejects format="numpy" for sequence features at construction, but datasets returns equal-length
        # float lists as one 2-D array; the default (Python lists) costs a Python float per score.
        info.format = "numpy"
        return info

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Check all inputs before anything is written: evaluate leaves its cache file behind when `_compute` raises."""
        if predictions is not None:
            _validated_inputs(predictions, references, **kwargs)
        return super().compute(predictions=predictions, references=references, **kwargs)

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Store an [N, C] score matrix as one Arrow list array.

        evaluate's generic path encodes every score as a Python object (about 1 s per million scores, minutes and
        gigabytes for iNat18's 24k x 8142); the stored data and `compute` results are the same.
        """
        if kwargs:
            raise ValueError(f"Unexpected inputs {sorted(kwargs)}; this metric takes predictions and references.")
        scores, labels = _as_batch(predictions, references)
        if self.writer is None:
            self.selected_feature_format = self.features
            self._init_writer()
        offsets = pa.array(np.arange(scores.shape[0] + 1, dtype=np.int64) * scores.shape[1], type=pa.int32())
        score_lists = pa.ListArray.from_arrays(offsets, pa.array(scores.ravel()))
        self.writer.write_table(pa.table({"predictions": score_lists, "references": labels}))

    def _compute(
        self, predictions, references, class_counts, many_threshold=100, few_threshold=20, ece_bins=15
    ):
        scores, labels, counts = _validated_inputs(
            predictions, references, class_counts, many_threshold, few_threshold, ece_bins
        )
        num_samples, num_classes = scores.shape
        predicted, confidence, nll, rank = _row_statistics(scores, labels)
        correct = (predicted == labels).astype(np.float64)

        tests_per_class = np.bincount(labels, minlength=num_classes)
        correct_per_class = np.bincount(labels, weights=correct, minlength=num_classes)
        has_test = tests_per_class > 0
        per_class = np.divide(correct_per_class, tests_per_class, out=np.full(num_classes, np.nan), where=has_test)

        many = counts > many_threshold
        few = counts < few_threshold
        medium = ~many & ~few

        # F1 = 2TP / (2TP + FP + FN) = 2TP / (#true + #predicted), over labels seen in references or predictions.
        predictions_per_class = np.bincount(predicted, minlength=num_classes)
        seen = (tests_per_class + predictions_per_class) > 0
        f1 = 2 * correct_per_class[seen] / (tests_per_class[seen] + predictions_per_class[seen])

        return {
            "accuracy": float(correct.mean()),
            "top5_accuracy": float((rank < min(5, num_classes)).mean()),
            "many_accuracy": _mean_or_none(per_class[many & has_test]),
            "medium_accuracy": _mean_or_none(per_class[medium & has_test]),
            "few_accuracy": _mean_or_none(per_class[few & has_test]),
            "per_class_accuracy": [None if np.isnan(acc) else float(acc) for acc in per_class],
            "macro_f1": float(f1.mean()),
            "ece": _expected_calibration_error(confidence, correct, int(ece_bins)),
            "nll": float(nll.mean()),
            "num_samples": int(num_samples),
            "num_many": int(many.sum()),
            "num_medium": int(medium.sum()),
            "num_few": int(few.sum()),
        }
