"""Every rule that decides a reported number, each on hand-made inputs chosen so that a plausible mistake changes
the answer: the score stage 1 selects on, the rule stage 2 makes the model's own, ECE bins with confidences exactly
on their edges, per-class rows with counts out of order, a model with a NaN, the padding rows of a split, the mode
cRT extracts features in and the epoch it keeps, and a stop asked by another process."""
import csv
import math

import numpy as np
import pytest
import torch

from cadel_modeling.data import LongTailedData
from cadel_modeling.data.loaders import LoaderSpec
from cadel_modeling.inference import predict_split, process_invariant_loader
from cadel_modeling.metrics import compute_long_tail_metrics, write_per_class_csv
from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.posthoc import rule_change_evidence, search_exit_weights
from cadel_modeling.stages.stage1 import selection_scores
from cadel_modeling.stages.stage2 import select_inference_rule
from cadel_modeling.training.accelerator import make_accelerator

COUNTS = [100, 10, 1]


def config(**kwargs):
    return CadelConfig(**{"backbone": "test_resnet", "num_labels": len(COUNTS), "image_size": 32,
                          "aux_head": "light", "class_counts": COUNTS, **kwargs})


# ------------------------------------------------------------------------------------------------ stage 1
def test_stage1_selects_on_the_raw_last_exit_for_a_cnn_and_the_tau_1_sum_for_a_vit():
    exit_logits = torch.tensor([[[1.0, 0.5, 0.0]], [[0.0, 1.0, 0.5]], [[2.0, 0.0, 0.4]]])  # [K=3, N=1, C=3]
    assert torch.equal(selection_scores(exit_logits, config(inference_rule="last")), exit_logits[-1])
    assert torch.equal(selection_scores(exit_logits, config(inference_rule="auto")), exit_logits[-1])
    log_prior = np.log(np.array(COUNTS, dtype=np.float64) / sum(COUNTS))
    expected = exit_logits.double().sum(0) - 3 * 1.0 * torch.from_numpy(log_prior)  # each of 3 exits, tau = 1
    for vit in (config(inference_rule="sum"), config(backbone="vit_tiny_patch16_224", inference_rule="auto")):
        scores = selection_scores(exit_logits, vit)
        torch.testing.assert_close(scores.double(), expected, rtol=0, atol=1e-5)
        assert scores.argmax(-1).tolist() == [2]  # the raw sum would say class 0; tau = 1 per exit says 2


# ------------------------------------------------------------------------------------------------ stage 2
def margins(*per_exit):
    """[K, N, 2] logits of two classes whose class-0 margin on each row is the given one (labels all 0)."""
    m = torch.tensor(per_exit, dtype=torch.float32)
    return torch.stack([m / 2, -m / 2], dim=-1), torch.zeros(m.shape[1], dtype=torch.long)


@pytest.mark.parametrize("model_rule, per_exit, rule, exit_weights", [
    # no exit alone gets every row right, their sum does: a CNN then predicts with the sum
    ("last", ([2, 2, -1], [2, -1, 2], [-1, 2, 2]), "sum", None),
    # only the last exit is right (the sum is wrong everywhere): a ViT then predicts with the last exit
    ("sum", ([-3, -3, -3], [-3, -3, -3], [1, 1, 1]), "last", None),
    # only exits 1 and 2 together are right: learned weights
    ("last", ([2, -1, 1], [-1, 2, 1], [-5, -5, -5]), "weighted", [0.5, 0.5, 0.0]),
])
def test_the_rule_that_wins_on_validation_becomes_the_models_own(model_rule, per_exit, rule, exit_weights):
    logits, labels = margins(*per_exit)
    model_config = CadelConfig(backbone="test_resnet", num_labels=2, class_counts=[5, 5], inference_rule=model_rule,
                               tau=0.5)
    ensemble = search_exit_weights(logits, labels, [5, 5], [0.0, 2.0], 0.5, model_rule)
    # confidence 0: any lead on val moves the rule (the robust threshold has tests of its own, test_rule_choice.py)
    evidence = rule_change_evidence(logits, labels, [5, 5], ensemble, model_rule, 0.5, resamples=50, confidence=0.0)
    chosen = select_inference_rule(model_config, ensemble, evidence)
    assert (model_config.inference_rule, model_config.exit_weights) == (rule, exit_weights)
    assert model_config.tau == 0.0 == chosen["tau"]  # the first tau reaching the best (both do: uniform counts)
    assert chosen == {"rule": rule, "exit_weights": exit_weights, "tau": 0.0, "val_top1": 1.0, "selected_on": "val",
                      "source": ensemble["source"], "moved": True}


# ------------------------------------------------------------------------------------------------ metrics
def test_ece_puts_a_confidence_on_a_bin_edge_in_the_bin_below():
    # 4 classes: equal top scores give confidences of exactly 1/4 (four-way tie) and 1/2 (two-way tie), both edges
    # of 4 bins; ties predict the lowest class index, so label 0 is right and label 1 wrong
    scores = np.array([[0, 0, 0, 0], [0, 0, -100, -100], [math.log(2), 0, 0, 0]], dtype=np.float32)
    labels = [0, 1, 0]
    third = 2 / 5  # e^ln2 / (e^ln2 + 3)
    # bins (0, .25], (.25, .5], (.5, .75], (.75, 1]: .25 (right) alone in the first; .5 (wrong) with 0.4 (right)
    expected = (abs(0.25 - 1) + abs(0.5 + third - 1)) / 3
    assert compute_long_tail_metrics(scores, labels, [1] * 4, ece_bins=4)["ece"] == pytest.approx(expected, abs=1e-6)
    # bins [lower, upper) would put .25 with 0.4 and .5 alone: a different number
    assert abs(expected - (abs(0.25 + third - 2) + abs(0.5 - 0)) / 3) > 0.3


def test_per_class_csv_rows_follow_the_class_ids_whatever_the_counts(tmp_path):
    counts = [3, 500, 20, 150, 7]  # neither ascending nor descending
    names = ["eel", "cat", "owl", "dog", "ant"]
    accuracy = [0.0, 1.0, None, 0.5, 0.25]
    with open(write_per_class_csv(tmp_path / "per_class.csv", accuracy, counts, names), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["class_id"]), r["class_name"], int(r["train_count"]), r["shot"]) for r in rows] == [
        (0, "eel", 3, "few"), (1, "cat", 500, "many"), (2, "owl", 20, "medium"), (3, "dog", 150, "many"),
        (4, "ant", 7, "few")]
    assert [float(r["accuracy"]) if r["accuracy"] else None for r in rows] == accuracy


# ------------------------------------------------------------------------------------------------ saving
@pytest.mark.parametrize("where", ["classifier.weight", "buffer"])
def test_a_model_with_a_nan_is_not_saved(tmp_path, where):
    from cadel_modeling.config import RunConfig
    from cadel_modeling.modeling.factory import save_model
    from cadel_modeling.utils.finite import NonFiniteTensorError

    model = CadelForImageClassification(config())
    cfg = RunConfig(backbone="test_resnet", image_size=32)
    save_model(model, tmp_path / "best_model", cfg, "none")  # a good model first: it must survive the refusal
    before = {p.name: p.read_bytes() for p in (tmp_path / "best_model").iterdir()}
    with torch.no_grad():
        if where == "buffer":
            next(b for name, b in model.named_buffers() if name.endswith("running_var"))[0] = float("nan")
        else:
            model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteTensorError, match="refusing to save"):
        save_model(model, tmp_path / "best_model", cfg, "none")
    assert {p.name: p.read_bytes() for p in (tmp_path / "best_model").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]  # no half-written folder either


# ------------------------------------------------------------------------------------------------ prediction
LABELS = [3, 1, 4, 0, 2, 4, 1, 3, 0, 2]  # not sorted, not the row order


def shaded_split():
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage
    images = [PILImage.new("RGB", (32, 32), color=(20 * i, 255 - 20 * i, 7 * i)) for i in range(len(LABELS))]
    split = Dataset.from_dict({"image": images, "label": LABELS},
                              features=Features({"image": Image(), "label": Value("int64")}))
    return LongTailedData(train=split, splits={"val": split, "test": split}, class_names=[str(i) for i in range(5)],
                          class_counts=[4, 3, 2, 2, 1], mean=(0.5,) * 3, std=(0.5,) * 3)


def test_prediction_keeps_the_splits_rows_in_order_and_drops_the_padding():
    data = shaded_split()
    torch.manual_seed(0)
    model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=5, image_size=32,
                                                    aux_head="light", class_counts=data.class_counts)).eval()
    spec = LoaderSpec(image_size=32, augmentation="none", eval_batch_size=4, num_workers=0)
    loader, size = process_invariant_loader(data, "val", spec, 1)  # 10 rows padded to 12
    accelerator = make_accelerator()
    exit_logits, labels = predict_split(model, loader, accelerator, size, "val")
    assert exit_logits.shape == (3, 10, 5) and labels.tolist() == LABELS
    rows = torch.cat([b["pixel_values"] for b in loader])[:10]
    with torch.no_grad():
        alone = torch.stack([torch.stack(model.exit_logits(rows[i:i + 1])) for i in range(10)], dim=1)[:, :, 0]
    torch.testing.assert_close(exit_logits, alone, rtol=1e-4, atol=1e-4)  # row i is image i (they all differ)
    assert len({tuple(r.tolist()) for r in exit_logits[-1]}) == 10


# ------------------------------------------------------------------------------------------------ cRT
def trained_mode_model(data):
    torch.manual_seed(0)
    model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=5, image_size=32,
                                                    aux_head="light", class_counts=data.class_counts))
    model.train()
    with torch.no_grad():  # BatchNorm statistics far from a batch's: train-mode features would differ a lot
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.fill_(0.3)
    return model


def test_crt_features_are_extracted_in_eval_mode_and_leave_the_model_as_it_was():
    from cadel_modeling.stages.crt import extract_features
    data = shaded_split()
    model = trained_mode_model(data)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    spec = LoaderSpec(image_size=32, augmentation="none", eval_batch_size=4, num_workers=0)
    loader, size = process_invariant_loader(data, "val", spec, 1)
    accelerator = make_accelerator()
    features, labels = extract_features(model, loader, accelerator, [1, 3], size)
    assert model.training and all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    assert labels.tolist() == LABELS and [f.shape[0] for f in features] == [10, 10]
    captured = {}
    model.eval()
    for k in (1, 3):
        model.exit_classifier(k).register_forward_pre_hook(lambda m, args, k=k: captured.__setitem__(k, args[0]))
    rows = torch.cat([b["pixel_values"] for b in loader])[:10]
    with torch.no_grad():
        model.exit_logits(rows)
    for f, k in zip(features, (1, 3)):
        torch.testing.assert_close(f, captured[k], rtol=1e-4, atol=1e-4)


def test_crt_keeps_the_classifier_of_its_best_validation_epoch(monkeypatch):
    from cadel_modeling.stages import crt
    data = shaded_split()
    model = trained_mode_model(data)
    scripted = iter([0.3, 0.6, 0.4, 0.6, 0.1])  # epochs 1-4 (best: 2, a later tie keeps it), then stage 1's
    monkeypatch.setattr(crt, "top1", lambda scores, labels: next(scripted))
    heads_per_call = []
    real = crt.logits_from_features

    def recording(classifiers, features, accelerator, **kwargs):
        heads_per_call.append([c.weight.detach().clone() for c in classifiers])
        return real(classifiers, features, accelerator, **kwargs)

    monkeypatch.setattr(crt, "logits_from_features", recording)
    spec = LoaderSpec(image_size=32, augmentation="none", eval_batch_size=4, num_workers=0)
    opts = crt.CRTOptions(epochs=4, lr=0.5, batch_size=5)
    logits, record = crt.retrain_classifiers(opts, make_accelerator(), model, data, spec)
    assert (record["best_epoch"], record["best_val_top1"], record["stage1_val_top1"]) == (2, 0.6, 0.1)
    per_epoch = [call[0] for call in heads_per_call[1:5]]  # call 0: stage 1's classifiers on val
    assert not torch.equal(per_epoch[1], per_epoch[3])  # training moved the classifier after epoch 2
    assert torch.equal(model.exit_classifier(3).weight, per_epoch[1])
    assert set(logits) == {"val", "test"}


# ------------------------------------------------------------------------------------------------ the loop
def test_a_stop_asked_by_another_process_stops_this_one_and_sets_its_flag():
    from cadel_modeling.config import RunConfig
    from cadel_modeling.training import loop
    from cadel_modeling.training.checkpointing import TrainState
    from cadel_modeling.training.losses import CascadeLoss
    from cadel_modeling.training.optim import OptimizerSpec, build_optimizer
    from cadel_modeling.training.preemption import Preemption

    accelerator = make_accelerator()
    real_reduce, calls = accelerator.reduce, []

    def reduce(tensor, reduction="sum"):  # another process got the signal during step 2
        out = real_reduce(tensor, reduction=reduction)
        if tensor.ndim == 1:
            calls.append(1)
            if len(calls) == 2:
                out = out.clone()
                out[1] += 1.0
        return out

    accelerator.reduce = reduce
    gen = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(4, 3, 32, 32, generator=gen), "labels": torch.arange(4) % 3}
               for _ in range(5)]
    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light", epochs=2, mixup_alpha=0.0)
    model = CadelForImageClassification(config())
    optimizer = build_optimizer(model, OptimizerSpec.from_config(cfg))
    preemption, state = Preemption(), TrainState()
    stats = loop.train_one_epoch(model, batches, optimizer, CascadeLoss(), accelerator,
                                 loop.LoopOptions.from_config(cfg), state, steps_per_epoch=5, preemption=preemption)
    assert preemption.requested and (state.step_in_epoch, state.global_step, stats["steps_taken"]) == (2, 2, 2)
    assert state.epoch_loss_count == 2  # the running loss kept for the checkpoint that follows


def test_crt_tries_tau_0_first_and_only_0_without_its_adjustment():
    from types import SimpleNamespace

    from cadel_modeling.stages.stage2 import METHODS
    grid = ["0.5", 0.0, 1]
    assert METHODS["logit_adjustment"].tau_grid(SimpleNamespace(tau_grid=grid)) == [0.5, 0.0, 1.0]
    assert METHODS["crt"].tau_grid(SimpleNamespace(tau_grid=grid, crt_logit_adjustment=True)) == [0.0, 0.5, 1.0]
    assert METHODS["crt"].tau_grid(SimpleNamespace(tau_grid=grid, crt_logit_adjustment=False)) == [0.0]


def test_stage2_says_what_it_chose_line_by_line():
    from cadel_modeling.stages.stage2 import choices_text
    summary = {"method": "crt", "exits": [3], "tau": 0.5,
               "val_sweep": [{"tau": 0.0, "top1": 0.5}, {"tau": 0.5, "top1": 0.625}],
               "crt": {"exits": [1, 3], "best_epoch": 2, "epochs": 4, "best_val_top1": 0.6, "stage1_val_top1": 0.55,
                       "lr": 0.05, "batch_size": 128},
               "ensemble": {"rules_val_top1": {"last exit (CNN rule)": 0.625, "sum of exits (ViT rule)": 0.5},
                            "normalized_weights": [0.25, 0.0, 0.75], "tau": 1.0, "val_top1": 0.7,
                            "num_candidates": 30, "grid_step": 0.25},
               "selected_rule": {"rule": "weighted", "exit_weights": [0.25, 0.0, 0.75], "tau": 1.0, "moved": True}}
    assert choices_text(summary, 3).splitlines() == [
        "stage 2 (crt), every choice made on the validation split:",
        "  cRT of exits 1, 3: best epoch 2/4 (val top-1 60.00%, stage-1 classifiers 55.00%), lr 0.05, batch 128, "
        "class-balanced sampling",
        "  tau = 0.5 for the last exit (CNN rule) (val top-1 per tau: 0: 50.00, 0.5: 62.50)",
        "  learned exit weights 0.25/0.00/0.75 with tau = 1: val top-1 70.00% (best of the rules: last exit (CNN "
        "rule) 62.50%, sum of exits (ViT rule) 50.00%; 30 candidates, grid step 0.25)",
        "  the model now predicts with learned exit weights 0.25/0/0.75, tau = 1 (--select_inference_rule)"]
    summary = {**summary, "crt": {**summary["crt"], "exits": [3]}, "ensemble": None,
               "selected_rule": {"rule": "sum", "exit_weights": None, "tau": 0.0, "moved": True}}
    lines = choices_text(summary, 3).splitlines()
    assert lines[1].startswith("  cRT of exit 3: best epoch") and len(lines) == 4
    assert lines[3] == "  the model now predicts with the sum rule, tau = 0 (--select_inference_rule)"


def test_crt_options_name_the_exits_and_record_every_setting():
    from types import SimpleNamespace

    from cadel_modeling.stages.crt import CRT_FEATURES, CRTOptions
    cfg = SimpleNamespace(crt_exits="all", crt_epochs=7, crt_lr=0.2, crt_batch_size=None, batch_size=64, momentum=0.8,
                          weight_decay=1e-3, crt_reinit=False, seed=5)
    opts = CRTOptions.from_config(cfg)
    assert opts.exit_numbers(4) == [1, 2, 3, 4] and CRTOptions(exits="last").exit_numbers(4) == [4]
    assert opts.record(3) == {"exits": [1, 2, 3], "epochs": 7, "lr": 0.2, "batch_size": 64, "momentum": 0.8,
                              "weight_decay": 1e-3, "schedule": "cosine per epoch, no warmup", "reinit": False,
                              "sampler": "class_balanced", "features": CRT_FEATURES}
    assert CRTOptions.from_config(SimpleNamespace(**{**vars(cfg), "crt_batch_size": 32})).batch_size == 32


def test_crt_reports_what_its_retrained_model_does():
    from cadel_modeling.stages import crt
    from cadel_modeling.training.optim import LRSchedule
    data = shaded_split()
    model = trained_mode_model(data)
    stage1_model = trained_mode_model(data).eval()  # the same weights, never touched by cRT
    spec = LoaderSpec(image_size=32, augmentation="none", eval_batch_size=4, num_workers=0)
    opts = crt.CRTOptions(exits="all", epochs=3, lr=0.5, batch_size=5, seed=1)
    accelerator = make_accelerator()
    logits, record = crt.retrain_classifiers(opts, accelerator, model, data, spec)
    loader, size = process_invariant_loader(data, "val", spec, 1)
    expected, labels = predict_split(model, loader, accelerator, size, "val")  # the re-trained model, run afresh
    for split in ("val", "test"):
        torch.testing.assert_close(logits[split][0], expected, rtol=1e-4, atol=1e-4)
        assert logits[split][1].tolist() == LABELS
    stage1_logits, _ = predict_split(stage1_model, loader, accelerator, size, "val")
    top1 = lambda z: (z[-1].argmax(-1) == labels).float().mean().item()  # noqa: E731 - the CNN rule, tau = 0
    assert record["stage1_val_top1"] == top1(stage1_logits)
    assert record["best_val_top1"] == max(r["val_top1"] for r in record["log"]) == top1(expected)
    assert [r["epoch"] for r in record["log"]] == [1, 2, 3]
    assert [r["lr"] for r in record["log"]] == [LRSchedule("cosine_epoch", 0.5, 3).at(e) for e in (1, 2, 3)]
    assert all(r["train_loss"] > 0 for r in record["log"])
    assert sum(record["drawn_per_class"]) == 3 * 2 * 5 and len(record["drawn_per_class"]) == 5  # 3 epochs x 2 steps
    assert all(not torch.equal(model.exit_classifier(k).weight, stage1_model.exit_classifier(k).weight)
               for k in (1, 2, 3))
    assert all(torch.equal(a, b) for (n, a), (_, b) in zip(model.backbone.state_dict().items(),
                                                           stage1_model.backbone.state_dict().items()))


# ------------------------------------------------------------------------------------------------ data and models
def test_long_tailed_profile_edges_and_the_class_its_messages_name():
    from cadel_modeling.data import long_tailed_counts, subsample_long_tailed
    assert long_tailed_counts(10, 3, 1) == [10, 10, 10]  # IF 1: balanced, allowed
    assert long_tailed_counts(10, 2, 1.5) == [10, 6]
    assert long_tailed_counts(10, 1, 5) == [10]  # one class: no division by zero
    with pytest.raises(ValueError, match=r"leaves class 2 \('c'\) and 0 more without images: raise --n_max to at "
                                         r"least 20 or lower --imb_factor to at most 10"):
        long_tailed_counts(10, 3, 20, class_names=["a", "b", "c"])  # [10, 2, 0]: only the last class is empty
    with pytest.raises(ValueError, match=r"^class 1 \('b'\) has 2 images, fewer than the 2 training \+ 1 validation"):
        subsample_long_tailed([0, 0, 0, 1, 1], [2, 2], val_per_class=1, class_names=["a", "b"])


def test_a_model_for_other_data_is_refused_and_default_label_names_are_not():
    from types import SimpleNamespace

    from cadel_modeling.inference import check_model_matches_data
    data = SimpleNamespace(num_classes=3, class_names=["cat", "dog", "owl"], class_counts=[5, 3, 1])
    same = CadelConfig(backbone="test_resnet", num_labels=3, id2label={0: "cat", 1: "dog", 2: "owl"},
                       class_counts=[5, 3, 1])
    check_model_matches_data(same, data, "m")
    check_model_matches_data(CadelConfig(backbone="test_resnet", num_labels=3, class_counts=[5, 3, 1]), data, "m")
    check_model_matches_data(CadelConfig(backbone="test_resnet", num_labels=3, id2label=same.id2label), data, "m")
    with pytest.raises(ValueError, match="m was trained for 4 classes but the dataset has 3"):
        check_model_matches_data(CadelConfig(backbone="test_resnet", num_labels=4), data, "m")
    renamed = CadelConfig(backbone="test_resnet", num_labels=3, id2label={0: "LABEL_0", 1: "cow", 2: "owl"})
    with pytest.raises(ValueError, match=r"\(2 names differ; class 0: model 'LABEL_0' vs data 'cat', class 1: "
                                         r"model 'cow' vs data 'dog'\); evaluate it"):
        check_model_matches_data(renamed, data, "m")
    recounted = CadelConfig(backbone="test_resnet", num_labels=3, id2label=same.id2label, class_counts=[5, 2, 1])
    with pytest.raises(ValueError, match=r"\(class 1 'dog': 2 vs 3\)"):
        check_model_matches_data(recounted, data, "m")


def test_per_class_plot_shows_classes_by_size_with_their_groups(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from cadel_modeling.metrics import plot_per_class_accuracy
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kw: figures.append(self))
    counts = [3, 500, 20, 150, 7]  # sorted by size: 500, 150, 20, 7, 3 (classes 1, 3, 2, 4, 0)
    accuracy = [0.0, 1.0, None, 0.5, 0.25]
    plot_per_class_accuracy(tmp_path / "acc.png", accuracy, counts, "my title", ["eel", "cat", "owl", "dog", "ant"])
    ax, count_ax = figures[0].axes
    assert ax.get_title() == "my title" and ax.get_ylabel() == "accuracy (%)" and ax.get_ylim() == (0, 125)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "owl", "ant", "eel"]
    assert ax.patches[0].get_data().values.tolist() == [100.0, 50.0, 0.0, 25.0, 0.0]  # owl untested: drawn as 0
    untested = [line for line in ax.lines if line.get_marker() == "x"][0]
    assert untested.get_xdata().tolist() == [2] and untested.get_label() == "no test images"
    assert count_ax.lines[0].get_ydata().tolist() == [500, 150, 20, 7, 3] and count_ax.get_yscale() == "log"
    low, high = count_ax.get_ylim()
    assert low == pytest.approx(3 / 1.5) and high == pytest.approx(2 * (500 / 2) ** 1.25)
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["Many (>100)\n2 classes\nmean 75.0%", "Medium (20-100)\n1 classes\nno test images",
                     "Few (<20)\n2 classes\nmean 12.5%"]
    assert [round(t.get_position()[0], 6) for t in ax.texts] == [0.5, 2.0, 3.5]
    boundaries = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert boundaries == [1.5, 2.5]  # between many | medium | few
    means = sorted((seg[0][0], seg[1][0], seg[0][1]) for c in ax.collections for seg in c.get_segments())
    assert means == [(-0.5, 1.5, 75.0), (2.5, 4.5, 12.5)]  # each tested group's mean, over its classes
    assert [t.get_text() for t in figures[0].legends[0].get_texts()] == ["per-class accuracy", "no test images",
                                                                         "training images"]
    figures.clear()
    plot_per_class_accuracy(tmp_path / "many.png", [0.5] * 31, list(range(31, 0, -1)), "t")
    assert figures[0].axes[0].get_xlabel() == "classes, sorted by number of training images"


def test_the_model_config_carries_every_run_setting_and_the_datas_labels():
    from types import SimpleNamespace

    from cadel_modeling.config import RunConfig
    from cadel_modeling.modeling.factory import model_config_for
    settings = dict(backbone="test_resnet", backbone_kwargs={"drop_rate": 0.1}, image_size=48, exit_stages=[-2],
                    exit_blocks=[1, 2], aux_head="light", aux_width=64, aux_groups=4, aux_padding="same",
                    aux_depth=3, aux_norm=True, cosine_scale=16.0, drop_path=0.05, inference_rule="sum")
    data = SimpleNamespace(num_classes=3, class_names=["a", "b", "c"], class_counts=[9, 4, 1], mean=(0.1, 0.2, 0.3),
                           std=(0.4, 0.5, 0.6))
    config = model_config_for(RunConfig(**settings), data)
    assert {k: getattr(config, k) for k in settings} == settings
    assert (config.num_labels, config.id2label, config.label2id, config.class_counts) == \
        (3, {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}, [9, 4, 1])
    assert (config.image_mean, config.image_std) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])


def test_save_model_replaces_a_folder_and_leaves_no_temporary_one(tmp_path):
    from cadel_modeling.config import RunConfig
    from cadel_modeling.modeling.factory import load_model, save_model
    from cadel_modeling.utils.finite import NonFiniteTensorError
    cfg = RunConfig(backbone="test_resnet", image_size=32)
    (tmp_path / "model.tmp").mkdir()
    (tmp_path / "model.tmp" / "stale").write_text("a crashed save")
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = CadelForImageClassification(config())
        save_model(model, tmp_path / "model", cfg, "none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert {"preprocessor_config.json", "run_config.yaml", "model.safetensors"} <= \
        {p.name for p in (tmp_path / "model").iterdir()} and not (tmp_path / "model" / "stale").exists()
    loaded = load_model(tmp_path / "model")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteTensorError, match=f"refusing to save the model to {tmp_path / 'other'}: 1 tensors"):
        save_model(model, tmp_path / "other", cfg, "none")
