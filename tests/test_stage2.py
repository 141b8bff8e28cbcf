"""Stage 2 through its real entry point on a tiny Fashion-MNIST-LT run (test_resnet at 32 px): the network runs once
per split, cRT changes nothing but the re-trained classifiers, and the learned exit weights can only match or beat
the rules on validation."""
import dataclasses
import json

import pytest
import torch
from scipy.stats import chisquare

from cadel_modeling.modeling.heads import weighted_scores
from cadel_modeling.posthoc import ensemble_scores, exit_weight_candidates, search_exit_weights, simplex_grid, tau_sweep

from conftest import FASHION_MNIST_DIR

EVAL_BATCH = 64
ARGS = ["--config", "fashion_mnist_lt", "--n_max", "60", "--val_per_class", "10", "--imb_factor", "20",
        "--backbone", "test_resnet", "--batch_size", "32", "--eval_batch_size", str(EVAL_BATCH)]
# every test re-runs stage 2 on one stage-1 folder: each run replaces the previous stage-2 result
STAGE2_ARGS = ["--crt_epochs", "3", "--crt_lr", "0.1", "--tau_grid", "[0.0, 0.5, 1.0, 1.5]", "--overwrite_output_dir"]
TEST_IMAGES = 150


def one_pass(*sizes):
    """Backbone calls of one pass over each split: the last batch is padded to EVAL_BATCH images."""
    return sum(-(-n // EVAL_BATCH) for n in sizes)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A stage-1 run folder holding an untrained test_resnet cascade, and its data (test split cut to 150 images)."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST idx files missing: apt-get install dataset-fashion-mnist")
    from cadel_modeling.config import parse_config
    from cadel_modeling.data import build_datasets
    from cadel_modeling.modeling.factory import build_model, save_model

    out = tmp_path_factory.mktemp("stage1")
    cfg = parse_config(ARGS + ["--output_dir", str(out)])
    data = build_datasets(cfg)
    data = dataclasses.replace(data, splits={**data.splits, "test": data.splits["test"].select(range(TEST_IMAGES))})
    torch.manual_seed(0)
    save_model(build_model(cfg, data), out / "best_model", cfg, cfg.augmentation)
    cfg.save(out / "config.yaml")
    return out, data


@pytest.fixture
def stage2_env(tiny_run, monkeypatch):
    """stage2.run on the tiny run, with the backbone's calls counted and the data built once per module."""
    from cadel_modeling.cli import resolve_config
    from cadel_modeling.config import STAGE2
    from cadel_modeling.stages import frame, stage2

    out, data = tiny_run
    seen = []
    load_model = frame.load_model

    def counting_load_model(model_dir):
        model = load_model(model_dir)
        model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0] == EVAL_BATCH))
        return model

    monkeypatch.setattr(frame, "build_datasets", lambda cfg: data)  # stage 2 and evaluation
    monkeypatch.setattr(frame, "load_model", counting_load_model)

    def run(*extra):
        seen.clear()
        summary = stage2.run(*resolve_config(STAGE2, STAGE2_ARGS + ["--stage1_dir", str(out), *extra], ""))
        assert all(seen)  # every call a full batch
        return summary, len(seen)

    return run, out, data


@pytest.mark.slow
def test_tau_sweep_runs_the_network_once_per_split(stage2_env, monkeypatch):
    from cadel_modeling.hub import publish

    run, out, data = stage2_env
    pushed = []

    def push(path, repo_id, private, **kwargs):
        written = (path / "ensemble.json").is_file() and (path.parent / "stage2_results.json").is_file()
        pushed.append((path, repo_id, private, written))

    monkeypatch.setattr(publish, "push_to_hub", push)
    summary, calls = run("--stage2_method", "logit_adjustment", "--push_to_hub", "true", "--hub_model_id", "me/tiny",
                         "--select_inference_rule", "true")
    assert calls == one_pass(len(data.splits["val"]), TEST_IMAGES)  # not once per tau
    assert pushed == [(out / "stage2_logit_adjustment" / "model", "me/tiny", False, True)]  # once all is written
    sweep = summary["val_sweep"]
    assert [r["tau"] for r in sweep] == [0.0, 0.5, 1.0, 1.5]
    assert summary["tau"] == next(r["tau"] for r in sweep if r["top1"] == max(s["top1"] for s in sweep))
    folder = out / "stage2_logit_adjustment"
    saved = json.loads((folder / "stage2_results.json").read_text())
    assert saved["tau"] == summary["tau"] and saved["exits"] == [3] and saved["crt"] is None
    ensemble = json.loads((folder / "model" / "ensemble.json").read_text())
    assert ensemble["weights"] == summary["ensemble"]["weights"] and ensemble["selected_on"] == "val"
    assert ensemble["val_top1"] >= saved["val_top1"]
    # the rule choice compared the search's winner with the model's rule at the tau of the sweep, on every val image
    evidence, chosen = saved["rule_evidence"], saved["selected_rule"]
    assert evidence["val_size"] == len(data.splits["val"]) and evidence["candidate_weights"] == ensemble["weights"]
    assert evidence["model_rule_val_top1"] == pytest.approx(saved["val_top1"])
    assert evidence["candidate_val_top1"] == pytest.approx(ensemble["val_top1"])
    assert chosen["moved"] == evidence["strong"]
    assert json.loads((folder / "model" / "config.json").read_text())["tau"] == \
        (ensemble["tau"] if chosen["moved"] else summary["tau"])
    test = json.loads((folder / "eval_test" / "results.json").read_text())
    assert test["results"][test["main"]]["num_samples"] == TEST_IMAGES


@pytest.mark.slow
@pytest.mark.parametrize("crt_exits", ["last", "all"])
def test_crt_changes_only_the_retrained_classifiers(stage2_env, crt_exits):
    from safetensors.torch import load_file

    from cadel_modeling.cli import resolve_config
    from cadel_modeling.config import EVALUATE
    from cadel_modeling.stages import evaluation

    run, out, data = stage2_env
    summary, calls = run("--stage2_method", "crt", "--crt_exits", crt_exits)
    assert calls == one_pass(len(data.train), len(data.splits["val"]), TEST_IMAGES)  # features once, not per epoch
    before = load_file(str(out / "best_model" / "model.safetensors"))
    after = load_file(str(out / "stage2_crt" / "model" / "model.safetensors"))
    retrained = {"classifier.weight"} | ({"aux_exits.0.classifier.weight", "aux_exits.1.classifier.weight"}
                                         if crt_exits == "all" else set())
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    for name in before:  # BatchNorm running statistics and every other head included
        assert torch.equal(before[name], after[name]) == (name not in retrained), name

    crt = summary["crt"]
    assert crt["exits"] == ([3] if crt_exits == "last" else [1, 2, 3]) and crt["sampler"] == "class_balanced"
    # The labels cRT actually drew are class-balanced although the training split is long-tailed (60 -> 3 images
    # per class): a chi-square test against the uniform distribution. An instance or square-root sampler, whose
    # draws follow the long tail, gives p < 1e-10 here.
    drawn = crt["drawn_per_class"]
    assert sum(drawn) == 3 * (len(data.train) // crt["batch_size"]) * crt["batch_size"]
    assert chisquare(drawn).pvalue > 1e-3, drawn
    frequencies = torch.tensor(data.class_counts, dtype=torch.float64) / sum(data.class_counts)
    assert chisquare(drawn, f_exp=(frequencies * sum(drawn)).tolist()).pvalue < 1e-6  # not the data's own law
    val_curve = [r["val_top1"] for r in crt["log"]]
    assert len(val_curve) == 3 and crt["best_epoch"] == val_curve.index(max(val_curve)) + 1
    assert summary["tau_grid"][0] == 0.0 and summary["ensemble"]["val_top1"] >= summary["val_top1"]
    # The saved model, evaluated through the network on val, reproduces the validation top-1 stage 2 chose with.
    cfg, model_dir = resolve_config(EVALUATE, ["--eval_model", str(out / "stage2_crt" / "model"), "--eval_split",
                                               "val"], "")
    results = evaluation.run(cfg, model_dir)
    assert next(iter(results.values()))["accuracy"] == pytest.approx(summary["val_top1"], abs=1e-6)  # float32 mean


def test_weighted_scores_reproduce_both_rules_exactly():
    torch.manual_seed(0)
    z = torch.randn(3, 40, 6)
    counts = [50, 30, 10, 5, 3, 1]
    candidates = dict(exit_weight_candidates(3, 0.25, rule="sum"))
    assert list(candidates)[:2] == ["sum of exits (ViT rule)", "last exit (CNN rule)"]
    for tau in (0.0, 1.3):
        assert torch.equal(weighted_scores(z, candidates["last exit (CNN rule)"], counts, tau),
                           ensemble_scores(z, counts, tau, "last"))
        assert torch.equal(weighted_scores(z, candidates["sum of exits (ViT rule)"], counts, tau),
                           ensemble_scores(z, counts, tau, "sum"))
    grid = simplex_grid(3, 0.25)
    assert len(grid) == 15 and all(abs(sum(w) - 1) < 1e-12 for w in grid) and (0.0, 0.0, 1.0) in grid
    with pytest.raises(ValueError, match="1/m"):
        simplex_grid(3, 0.3)
    with pytest.raises(ValueError, match="non-negative"):
        weighted_scores(z, [0.0, 0.0, 0.0], counts, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learned_exit_weights_match_or_beat_every_rule_on_val(seed):
    gen = torch.Generator().manual_seed(seed)
    counts = [400, 200, 90, 40, 15, 6, 2]
    labels = torch.arange(7).repeat(30)
    signal = torch.nn.functional.one_hot(labels, 7).float()
    prior = torch.log(torch.tensor(counts, dtype=torch.float) / sum(counts))
    z = torch.stack([torch.randn(len(labels), 7, generator=gen) * 1.5 + s * signal + prior for s in (0.8, 1.2, 1.5)])
    grid = [0.0, 0.5, 1.0, 1.5]
    found = search_exit_weights(z, labels, counts, grid, step=0.1, rule="last")
    rules = {"last": max(r["top1"] for r in tau_sweep(z, labels, counts, grid, "last")),
             "sum": max(r["top1"] for r in tau_sweep(z, labels, counts, grid, "sum")),
             **{k: max(r["top1"] for r in tau_sweep(z, labels, counts, grid, "last", [k])) for k in (1, 2, 3)}}
    assert found["val_top1"] >= max(rules.values())
    assert found["rules_val_top1"] == {"last exit (CNN rule)": rules["last"], "sum of exits (ViT rule)": rules["sum"]}
    scores = weighted_scores(z, found["weights"], counts, found["tau"])  # the choice reproduces its own top-1
    assert (scores.argmax(-1) == labels).float().mean().item() == found["val_top1"]
    assert found["num_candidates"] == (2 + 66) * len(grid) and sum(found["normalized_weights"]) == pytest.approx(1)


def test_stage2_method_choices_are_the_method_table():
    from cadel_modeling.config.schema import FIELDS
    from cadel_modeling.stages.stage2 import METHODS
    assert list(FIELDS["stage2_method"].metadata["choices"]) == list(METHODS)


def test_each_method_searches_its_own_tau_grid():
    from cadel_modeling.config import RunConfig
    from cadel_modeling.stages.stage2 import METHODS
    grid = [1.0, 0.0, 1.2]
    assert METHODS["logit_adjustment"].tau_grid(RunConfig(tau_grid=grid)) == [1.0, 0.0, 1.2]
    assert METHODS["crt"].tau_grid(RunConfig(tau_grid=grid)) == [0.0, 1.0, 1.2]  # 0 first, once
    assert METHODS["crt"].tau_grid(RunConfig(tau_grid=grid, crt_logit_adjustment=False)) == [0.0]
    assert METHODS["logit_adjustment"].report_lines(None) == []
    record = {"exits": [2, 3], "best_epoch": 4, "epochs": 10, "best_val_top1": 0.5, "stage1_val_top1": 0.25,
              "lr": 0.05, "batch_size": 64}
    assert METHODS["crt"].report_lines(record) == [
        "  cRT of exits 2, 3: best epoch 4/10 (val top-1 50.00%, stage-1 classifiers 25.00%), lr 0.05, batch 64, "
        "class-balanced sampling"]
