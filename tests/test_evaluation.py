"""Evaluation: every metric of every score variant against scikit-learn / numpy on known logits, the variants'
scores against hand-made formulas, the test-agnostic subsets, and a 2-process run giving the 1-process numbers."""
import csv
import json
import shutil
import socket
import subprocess

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, log_loss, recall_score, top_k_accuracy_score

from cadel_modeling.data import LongTailedData
from cadel_modeling.data.loaders import LoaderSpec
from cadel_modeling.inference import process_invariant_loader
from cadel_modeling.modeling import CadelConfig
from cadel_modeling.posthoc import selected_exits
from cadel_modeling.results import score_variants, shifted_test_subsets, write_report

from conftest import REPO, requires_fashion_mnist

COUNTS = [500, 300, 150, 101, 100, 60, 20, 19, 10, 5, 2, 1]  # many: 4 classes, medium: 3, few: 5
C = len(COUNTS)
LOG_PRIOR = np.log(np.array(COUNTS, dtype=np.float64) / sum(COUNTS))
ENSEMBLE = {"weights": [0.2, 0.3, 0.5], "normalized_weights": [0.2, 0.3, 0.5], "tau": 0.5}


def known_logits(seed=0, per_class=30):
    """[3, N, C] exit logits that favour the true class (more so for deeper exits) and the head classes."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(C).repeat_interleave(per_class)
    signal = torch.nn.functional.one_hot(labels, C).float()
    head_bias = torch.tensor(LOG_PRIOR, dtype=torch.float32)
    z = torch.stack([torch.randn(len(labels), C, generator=gen) * 2 + (1 + k) * signal + head_bias
                     for k in range(3)])
    return z, labels


def hand_scores(z, tau):
    """The variants' scores written out: exits adjusted by tau each, then combined."""
    z = z.double().numpy()
    adjusted = z - tau * LOG_PRIOR
    w = np.array(ENSEMBLE["weights"])
    return {"last": adjusted[2], "sum": adjusted.sum(0), "exit1": adjusted[0], "exit2": adjusted[1],
            "learned": np.tensordot(w, z, 1) - ENSEMBLE["tau"] * w.sum() * LOG_PRIOR}


def reference_metrics(scores, labels):
    """Every metric from scikit-learn or plain numpy."""
    y = labels.numpy()
    probs = np.exp(scores - scores.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    pred = scores.argmax(1)
    per_class = recall_score(y, pred, labels=range(C), average=None, zero_division=0)
    counts = np.array(COUNTS)
    groups = {"many": counts > 100, "medium": (counts >= 20) & (counts <= 100), "few": counts < 20}
    confidence, correct = probs.max(1), (pred == y).astype(float)
    edges = np.linspace(0, 1, 16)
    ece = sum(abs(confidence[m].sum() - correct[m].sum()) for lo, hi in zip(edges[:-1], edges[1:])
              for m in [(confidence > lo) & (confidence <= hi)]) / len(y)
    return {"accuracy": correct.mean(), "top5_accuracy": top_k_accuracy_score(y, scores, k=5, labels=range(C)),
            **{f"{g}_accuracy": per_class[mask].mean() for g, mask in groups.items()},
            "macro_f1": f1_score(y, pred, average="macro"), "nll": log_loss(y, probs, labels=range(C)), "ece": ece,
            "per_class_accuracy": per_class}


def cnn_config(**kwargs):
    return CadelConfig(backbone="resnet18", num_labels=C, class_counts=COUNTS, **kwargs)


def test_every_metric_of_every_variant_matches_sklearn(tmp_path):
    z, labels = known_logits()
    tau = 1.25
    data = LongTailedData(train=None, splits={}, class_names=[f"c{i}" for i in range(C)], class_counts=COUNTS)
    results = write_report(z, labels, cnn_config(tau=tau), data, tmp_path, "test", ensemble=ENSEMBLE)
    hand, hand_raw = hand_scores(z, tau), hand_scores(z, 0.0)
    expected = {"last exit (CNN rule), tau=1.25": hand["last"], "last exit (CNN rule), tau=0": hand_raw["last"],
                "learned exit weights 0.20/0.30/0.50, tau=0.5": hand["learned"],
                "sum of exits (ViT rule), tau=1.25": hand["sum"], "exit 1 alone, tau=1.25": hand["exit1"],
                "exit 2 alone, tau=1.25": hand["exit2"]}
    assert list(results) == list(expected)  # the main variant (the rule after adjustment) first
    for name, scores in expected.items():
        ref = reference_metrics(scores, labels)
        got = results[name]
        for key, value in ref.items():
            assert np.allclose(got[key], value, atol=1e-6), (name, key, got[key], value)
        assert got["num_samples"] == len(labels) and (got["num_many"], got["num_medium"], got["num_few"]) == (4, 3, 5)
    adjusted, raw = results["last exit (CNN rule), tau=1.25"], results["last exit (CNN rule), tau=0"]
    assert adjusted["few_accuracy"] > raw["few_accuracy"]  # the adjustment helps the tail of this head-biased data

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["main"] == "last exit (CNN rule), tau=1.25" and saved["exits"] == [3] and saved["tau"] == tau
    assert saved["results"] == json.loads(json.dumps(results)) and saved["ensemble"] == ENSEMBLE
    rows = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    main_per_class = reference_metrics(hand["last"], labels)["per_class_accuracy"]
    assert [int(r["train_count"]) for r in rows] == COUNTS
    assert np.allclose([float(r["accuracy"]) for r in rows], main_per_class)
    assert [r["shot"] for r in rows] == ["many"] * 4 + ["medium"] * 3 + ["few"] * 5
    assert (tmp_path / "per_class_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_are_computed_on_the_main_process_only(tmp_path):
    z, labels = known_logits()
    data = LongTailedData(train=None, splits={}, class_names=[str(i) for i in range(C)], class_counts=COUNTS)
    assert write_report(z, labels, cnn_config(tau=1.0), data, tmp_path / "other", "test", is_main=False) == {}
    assert not (tmp_path / "other").exists()


def test_variants_for_a_vit_and_for_chosen_exits():
    z, _ = known_logits(seed=1)
    hand = hand_scores(z, 1.5)
    vit = score_variants(z, cnn_config(inference_rule="sum", tau=1.5))
    assert list(vit) == ["sum of exits (ViT rule), tau=1.5", "sum of exits (ViT rule), tau=0",
                         "exit 1 alone, tau=1.5", "exit 2 alone, tau=1.5", "last exit (CNN rule), tau=1.5"]
    assert np.allclose(vit["sum of exits (ViT rule), tau=1.5"].numpy(), hand["sum"], atol=1e-4)
    assert np.allclose(vit["last exit (CNN rule), tau=1.5"].numpy(), hand["last"], atol=1e-4)
    chosen = score_variants(z, cnn_config(tau=1.5), exits=[1, 3])
    assert list(chosen)[:2] == ["exits 1+3, tau=1.5", "exits 1+3, tau=0"]
    assert np.allclose(chosen["exits 1+3, tau=1.5"].numpy(), hand["exit1"] + hand["last"], atol=1e-4)
    assert torch.equal(chosen["exits 1+3, tau=0"], z[0] + z[2])
    assert selected_exits(3, "last", [2]) == (2,)
    for bad in ([0], [4], [2, 2]):
        with pytest.raises(ValueError, match="1..3"):
            selected_exits(3, "last", bad)


def test_shifted_test_subsets_follow_the_exponential_profile():
    per_class = 50
    labels = torch.arange(C).repeat(per_class)  # balanced, interleaved
    counts = COUNTS[::-1]  # class 11 is the most frequent training class, class 0 the rarest
    subsets = shifted_test_subsets(labels, counts, ratios=(50, 10, 2), seed=3)
    assert list(subsets) == ["forward_50", "forward_10", "forward_2", "uniform", "backward_2", "backward_10",
                             "backward_50"]
    assert torch.equal(subsets["uniform"], torch.arange(len(labels)))
    rank = np.argsort(np.argsort(-np.array(counts), kind="stable"), kind="stable")  # 0 = most frequent
    for name, idx in subsets.items():
        if name == "uniform":
            continue
        direction, ratio = name.split("_")
        exponent = rank / (C - 1) if direction == "forward" else (C - 1 - rank) / (C - 1)
        expected = np.maximum(np.floor(per_class * float(ratio) ** -exponent), 1)
        assert np.array_equal(np.bincount(labels[idx].numpy(), minlength=C), expected), name
        assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == len(idx)
    assert np.bincount(labels[subsets["forward_50"]].numpy(), minlength=C)[11] == per_class
    assert set(subsets["forward_50"].tolist()) <= set(subsets["forward_10"].tolist())  # nested: one shuffle
    with pytest.raises(ValueError, match="every class"):
        shifted_test_subsets(labels[labels != 4], counts)


def test_process_invariant_loader_pads_to_whole_rounds_of_full_batches():
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    images = [PILImage.new("L", (8, 8), color=i) for i in range(10)]
    split = Dataset.from_dict({"image": images, "label": list(range(10))},
                              features=Features({"image": Image(), "label": Value("int64")}))
    data = LongTailedData(train=None, splits={"val": split}, class_names=[str(i) for i in range(10)],
                          class_counts=[1] * 10, mean=(0.5,) * 3, std=(0.5,) * 3)
    spec = LoaderSpec(image_size=8, augmentation="none", eval_batch_size=4, num_workers=0)
    for processes, labels in ((1, list(range(10)) + [0, 1]), (2, list(range(10)) + list(range(6)))):
        loader, size = process_invariant_loader(data, "val", spec, processes)
        batches = list(loader)
        assert size == 10 and all(len(b["labels"]) == 4 for b in batches)  # the same shape for any process count
        assert torch.cat([b["labels"] for b in batches]).tolist() == labels
    with pytest.raises(ValueError, match="available"):
        process_invariant_loader(data, "test", spec, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@requires_fashion_mnist
def test_two_process_evaluation_gives_the_single_process_results(tmp_path, monkeypatch):
    from cadel_modeling.cli import resolve_config
    from cadel_modeling.config import EVALUATE, parse_config
    from cadel_modeling.data import build_datasets
    from cadel_modeling.modeling.factory import build_model, save_model
    from cadel_modeling.stages import evaluation, frame
    from cadel_modeling.utils.io import write_json

    args = ["--config", "fashion_mnist_lt", "--n_max", "60", "--val_per_class", "10", "--imb_factor", "20",
            "--backbone", "test_resnet", "--eval_batch_size", "40"]
    cfg = parse_config(args)
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    data = build_datasets(cfg)
    monkeypatch.setattr(frame, "build_datasets", lambda _: data)  # built once in this process
    model = build_model(cfg, data)
    model.config.tau = 0.75
    save_model(model, model_dir, cfg, cfg.augmentation)
    ensemble = {**ENSEMBLE, "weights": [0.5, 0.0, 0.5], "normalized_weights": [0.5, 0.0, 0.5]}
    write_json(model_dir / "ensemble.json", ensemble)

    single = evaluation.run(*resolve_config(EVALUATE, ["--eval_model", str(model_dir), "--eval_split", "val"], ""))
    one = json.loads((model_dir / "eval_val" / "results.json").read_text())
    shutil.rmtree(model_dir / "eval_val")
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "evaluate.py", "--eval_model", str(model_dir), "--eval_split", "val"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads((model_dir / "eval_val" / "results.json").read_text())
    one.pop("command"), two.pop("command")
    assert (one.pop("num_processes"), two.pop("num_processes")) == (1, 2)  # one gloo group of two, not two copies
    assert one["results"]["learned exit weights 0.50/0.00/0.50, tau=0.5"]["num_samples"] == 100
    assert two == one  # every number, exactly
    assert single[one["main"]] == one["results"][one["main"]]
