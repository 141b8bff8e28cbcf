"""Long-tail metrics: the evaluate module against sklearn and hand-computed numbers, the shot groups on the real count
files, and the table / CSV / plot reports."""
import ast
import csv
import itertools
import socket
import sys
import types

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, top_k_accuracy_score

from cadel_modeling.metrics import (
    compute_long_tail_metrics,
    format_table,
    load_metric,
    plot_per_class_accuracy,
    shot_groups,
    write_per_class_csv,
)
from cadel_modeling.metrics.long_tail import METRIC_PATH


def softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores.astype(np.float64) - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def reference_ece(confidences: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> float:
    """MiSLAS / Guo et al. loop: bins (lower, upper], weighted |confidence - accuracy| gaps."""
    edges = np.linspace(0, 1, num_bins + 1)
    ece = 0.0
    for lower, upper in itertools.pairwise(edges):
        in_bin = (confidences > lower) & (confidences <= upper)
        if in_bin.any():
            ece += abs(confidences[in_bin].mean() - correct[in_bin].mean()) * in_bin.mean()
    return ece


def scores_predicting(predicted, num_classes: int) -> np.ndarray:
    scores = np.zeros((len(predicted), num_classes), dtype=np.float32)
    scores[np.arange(len(predicted)), predicted] = 5.0
    return scores


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    num_classes = 12
    labels = rng.integers(0, 8, size=300)  # classes 8-11 never occur as labels
    scores = rng.normal(size=(300, num_classes)).astype(np.float32)
    scores[np.arange(300), labels] += 1.5  # better than chance, so every metric is non-trivial
    scores[:, 10:] -= 5.0  # classes 10-11 are never predicted either: they must not count in macro-F1
    counts = rng.integers(1, 300, size=num_classes)
    predicted = scores.argmax(axis=1)
    probs = softmax(scores)

    out = compute_long_tail_metrics(scores, labels, counts)

    assert out["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert out["top5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, scores, k=5, labels=range(num_classes)))
    assert out["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert out["nll"] == pytest.approx(log_loss(labels, probs, labels=range(num_classes)), rel=1e-6)
    assert out["ece"] == pytest.approx(reference_ece(probs.max(axis=1), (predicted == labels).astype(float)))
    matrix = confusion_matrix(labels, predicted, labels=range(num_classes))
    recall = np.diag(matrix)[:8] / matrix.sum(axis=1)[:8]
    assert out["per_class_accuracy"][:8] == pytest.approx(recall.tolist())
    assert out["per_class_accuracy"][8:] == [None] * 4
    assert out["num_samples"] == 300


def test_top_k_is_capped_at_the_number_of_classes():
    scores = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]], dtype=np.float32)
    out = compute_long_tail_metrics(scores, [0, 2], [5, 5, 5])
    assert out["accuracy"] == 0.0
    assert out["top5_accuracy"] == 1.0


def test_ties_go_to_the_lower_class_index():
    """Like argmax: with all scores equal, class 0 ranks first and class 6 seventh."""
    out = compute_long_tail_metrics(np.ones((2, 7), dtype=np.float32), [0, 6], [5] * 7)
    assert (out["accuracy"], out["top5_accuracy"]) == (0.5, 0.5)


def test_many_classes_match_sklearn():
    """600 x 8142 scores span several row blocks inside the module."""
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(600, 8142)).astype(np.float32)
    labels = rng.integers(0, 8142, size=600)
    scores[np.arange(0, 600, 2), labels[::2]] += 4.0
    out = compute_long_tail_metrics(scores, labels, rng.integers(2, 1000, 8142))
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, scores.argmax(axis=1)))
    assert out["top5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, scores, k=5, labels=range(8142)))
    assert out["nll"] == pytest.approx(log_loss(labels, softmax(scores), labels=range(8142)), rel=1e-6)


def test_ece_hand_computed():
    # Two classes with softmax (p, 1 - p); p = 0.95, 0.95, 0.7, 0.62 and correctness 1, 0, 1, 0.
    p = np.array([0.95, 0.95, 0.7, 0.62])
    scores = np.log(np.stack([p, 1 - p], axis=1)).astype(np.float32)
    labels = [0, 1, 0, 1]
    # 15 bins: (14/15, 1] holds 0.95, 0.95 (accuracy 0.5); (10/15, 11/15] holds 0.7 (acc 1); (9/15, 10/15] 0.62 (acc 0)
    expected = 2 / 4 * abs(0.95 - 0.5) + 1 / 4 * abs(0.7 - 1) + 1 / 4 * abs(0.62 - 0)
    assert compute_long_tail_metrics(scores, labels, [1, 1])["ece"] == pytest.approx(expected, abs=1e-6)
    one_bin = abs(p.mean() - 0.5)
    assert compute_long_tail_metrics(scores, labels, [1, 1], ece_bins=1)["ece"] == pytest.approx(one_bin, abs=1e-6)


def test_shot_groups_boundaries():
    counts = [1280, 101, 100, 50, 20, 19, 2]
    assert shot_groups(counts).tolist() == ["many", "many", "medium", "medium", "medium", "few", "few"]


def test_group_accuracies_hand_made():
    counts = [500, 101, 100, 20, 19, 5]  # many, many, medium (100), medium (20), few, few
    labels = [0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4]  # class 5 has no test image
    predicted = [0, 0, 1, 0, 2, 0, 1, 3, 3, 0, 5]
    out = compute_long_tail_metrics(scores_predicting(predicted, 6), labels, counts)
    assert out["per_class_accuracy"] == [1.0, 0.5, 0.25, 1.0, 0.0, None]
    assert out["many_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["medium_accuracy"] == pytest.approx((0.25 + 1.0) / 2)
    assert out["few_accuracy"] == 0.0
    assert out["accuracy"] == pytest.approx(5 / 11)
    assert (out["num_many"], out["num_medium"], out["num_few"]) == (2, 2, 2)
    custom = compute_long_tail_metrics(scores_predicting(predicted, 6), labels, counts, many_threshold=200,
                                       few_threshold=101)
    assert (custom["num_many"], custom["num_medium"], custom["num_few"]) == (1, 1, 4)


def test_group_without_tested_class_is_none():
    out = compute_long_tail_metrics(scores_predicting([0, 1], 3), [0, 1], [500, 200, 10])
    assert out["medium_accuracy"] is None
    assert out["few_accuracy"] is None  # class 2 is few-shot but has no test image
    assert out["many_accuracy"] == 1.0


@pytest.mark.parametrize("file_name, expected", [("imagenet_lt_num_shots.npz", (385, 479, 136)),
                                                  ("inat18_num_shots.npz", (842, 4076, 3224))])
def test_group_sizes_of_real_count_files(reference_data, file_name, expected):
    path = reference_data / file_name
    counts = np.load(path)["num_per_class"]
    groups = shot_groups(counts)
    assert tuple(int((groups == g).sum()) for g in ("many", "medium", "few")) == expected
    rng = np.random.default_rng(0)
    out = compute_long_tail_metrics(rng.normal(size=(20, len(counts))).astype(np.float32),
                                    rng.integers(0, len(counts), 20), counts)
    assert (out["num_many"], out["num_medium"], out["num_few"]) == expected


def test_torch_inputs_and_batches_match_numpy():
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.normal(size=(64, 10)).astype(np.float32)).to(torch.bfloat16)
    labels = torch.from_numpy(rng.integers(0, 10, 64))
    counts = torch.arange(10) * 30
    reference = compute_long_tail_metrics(scores.float().numpy(), labels.numpy(), counts.numpy())
    assert compute_long_tail_metrics(scores, labels, counts) == reference
    metric = load_metric()
    metric.add_batch(predictions=scores[:40].float().numpy(), references=labels[:40].numpy())
    metric.add_batch(predictions=scores[40:].float().numpy(), references=labels[40:].numpy())
    assert metric.compute(class_counts=counts.numpy()) == reference


GOOD_SCORES = np.zeros((2, 3), dtype=np.float32)


@pytest.mark.parametrize("scores, labels, counts, message", [
    (GOOD_SCORES, [0, 1], [10, 10], "class_counts must hold one training count per class"),
    (GOOD_SCORES, [0, 3], [10, 10, 10], "references must lie in"),
    (GOOD_SCORES, [-1, 0], [10, 10, 10], "references must lie in"),
    (GOOD_SCORES, [0, 1], [10, -1, 10], "non-negative"),
    (GOOD_SCORES, [0, 1, 2], [10, 10, 10], "one per prediction row"),
    (GOOD_SCORES, [0.0, 1.0], [10, 10, 10], "integer class indices"),
    (np.full((2, 3), np.nan, dtype=np.float32), [0, 1], [10, 10, 10], "NaN"),
    ([[0.0, 1.0], [0.0]], [0, 1], [10, 10], "rectangular"),
])
def test_invalid_inputs_raise_before_writing(tmp_path, scores, labels, counts, message):
    import evaluate

    metric = evaluate.load(str(METRIC_PATH), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=scores, references=labels, class_counts=counts)
    assert not list(tmp_path.rglob("*.arrow"))  # evaluate leaves the cache file behind when _compute raises


def test_invalid_inputs_raise_through_compute_long_tail_metrics():
    with pytest.raises(ValueError, match="class_counts"):
        compute_long_tail_metrics(GOOD_SCORES, [0, 1], [10] * 4)


def test_module_loads_offline(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("network access during evaluate.load")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    metric = evaluate.load(str(METRIC_PATH))
    out = metric.compute(predictions=[[2.0, 0.0], [0.0, 1.0]], references=[0, 0], class_counts=[150, 10])
    assert (out["accuracy"], out["many_accuracy"], out["few_accuracy"]) == (0.5, 0.5, None)
    assert "many" in metric.description and metric.citation


def test_module_is_self_contained():
    """evaluate copies the module file into its cache: it can only import third-party packages."""
    tree = ast.parse((METRIC_PATH / "long_tail_classification.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"datasets", "evaluate", "numpy", "pyarrow"}


def test_load_metric_rejects_shadowed_evaluate(monkeypatch):
    load_metric.cache_clear()
    monkeypatch.setitem(sys.modules, "evaluate", types.ModuleType("evaluate"))
    try:
        with pytest.raises(ImportError, match="not the Hugging Face"):
            load_metric()
    finally:
        load_metric.cache_clear()


def test_format_table():
    results = {
        "stage1 (tau=0)": {"accuracy": 0.5234, "many_accuracy": 0.7, "medium_accuracy": 0.45, "few_accuracy": None,
                           "top5_accuracy": 0.8, "ece": 0.0178, "nll": 2.3456, "macro_f1": 0.49},
        "stage2 (tau=1.2)": {"accuracy": 0.55, "many_accuracy": 0.651, "medium_accuracy": 0.5, "few_accuracy": 0.33,
                             "top5_accuracy": 0.81, "ece": 0.05, "nll": 1.9, "macro_f1": 0.52},
    }
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["All", "Many", "Medium", "Few", "Top-5", "ECE", "NLL", "macro-F1"]
    assert lines[1].startswith("stage1 (tau=0)")
    assert lines[1].split()[-8:] == ["52.3", "70.0", "45.0", "-", "80.0", "1.8", "2.346", "49.0"]
    assert lines[2].split()[-8:] == ["55.0", "65.1", "50.0", "33.0", "81.0", "5.0", "1.900", "52.0"]
    assert len({len(line) for line in lines[:3]}) == 1  # columns line up


def test_per_class_csv_round_trip(tmp_path):
    accuracy = [1.0, None, 1 / 3, 0.0]
    counts = [500, 100, 20, 3]
    names = ["cat", "dog, large", "owl", "eel"]
    path = write_per_class_csv(tmp_path / "per_class.csv", accuracy, counts, names)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["class_id"]) for r in rows] == [0, 1, 2, 3]
    assert [r["class_name"] for r in rows] == names
    assert [int(r["train_count"]) for r in rows] == counts
    assert [r["shot"] for r in rows] == ["many", "medium", "medium", "few"]
    assert [float(r["accuracy"]) if r["accuracy"] else None for r in rows] == accuracy
    with pytest.raises(ValueError, match="one entry per class"):
        write_per_class_csv(tmp_path / "bad.csv", accuracy, counts[:3], names)


@pytest.mark.parametrize("num_classes", [8, 1000])
def test_plot_writes_png(tmp_path, num_classes):
    from PIL import Image

    rng = np.random.default_rng(0)
    counts = np.sort(rng.integers(2, 1000, num_classes))
    accuracy = rng.uniform(size=num_classes).tolist()
    accuracy[0] = None
    names = [f"class {i}" for i in range(num_classes)]
    path = plot_per_class_accuracy(tmp_path / "acc.png", accuracy, counts, title="test", class_names=names)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    with Image.open(path) as image:
        assert image.size == (1440, 660)
        assert len(image.getcolors(maxcolors=1_000_000)) > 50  # bars, lines and text, not a blank canvas
