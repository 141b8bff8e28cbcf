"""Real training on real data, through the same entry points users run: stage 1 must learn, stage 2 must pick tau
on validation, evaluation must write its reports, and a used output folder must never be overwritten."""
import json

import pytest
import yaml

from cadel_modeling.cli import resolve_config
from cadel_modeling.config import EVALUATE, STAGE2, parse_config
from cadel_modeling.modeling import CadelForImageClassification
from cadel_modeling.modeling.locate import find_model_dir
from cadel_modeling.stages import evaluation, stage2

pytestmark = pytest.mark.slow


def test_stage1_learns_and_writes_its_outputs(trained_run):
    out, summary = trained_run
    assert summary["best_val_top1"] > 0.35, summary  # chance is 0.10 on the balanced validation split
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert [r["T"] for r in log] == pytest.approx([2 / 3, 1 / 3, 0.0])  # 1 - epoch/E, from plain CE to weighted
    assert log[-1]["train_loss"] < 0.9 * log[0]["train_loss"], [r["train_loss"] for r in log]
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 3
    info = json.loads((out / "run_info.json").read_text())
    assert info["class_counts"] == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    model = CadelForImageClassification.from_pretrained(str(out / "best_model"))
    assert model.config.class_counts == info["class_counts"] and model.config.tau == 0.0
    assert (out / "best_model" / "run_config.yaml").exists() and (out / "last_model").is_dir()


def test_best_model_is_the_logged_best_epoch(trained_run):
    """best_model/, evaluated again through the network on val, gives the best val top-1 the log recorded."""
    out, summary = trained_run
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda r: r["val_top1"])  # first maximum, as stage 1 keeps it
    assert (summary["best_epoch"], summary["best_val_top1"]) == (best["epoch"], best["val_top1"])
    results = evaluation.run(*resolve_config(EVALUATE, ["--eval_model", str(out / "best_model"), "--eval_split",
                                                        "val"], ""))
    report = json.loads((out / "best_model" / "eval_val" / "results.json").read_text())
    assert results[report["main"]]["accuracy"] == pytest.approx(best["val_top1"], abs=1e-6)


def test_stage2_picks_tau_on_val_and_evaluate_reports(trained_run):
    out, _ = trained_run
    cfg, best = resolve_config(STAGE2, ["--stage1_dir", str(out)], "")
    assert cfg.backbone == "resnet18" and cfg.epochs == 3  # the stage-1 run's config is the base
    summary = stage2.run(cfg, best)
    sweep = summary["val_sweep"]
    best = max(r["top1"] for r in sweep)
    assert summary["tau"] == next(r["tau"] for r in sweep if r["top1"] == best)
    model_dir = out / "stage2_logit_adjustment" / "model"
    assert CadelForImageClassification.from_pretrained(str(model_dir)).config.tau == summary["tau"]

    assert find_model_dir(str(out)) == model_dir  # a run folder resolves to its newest stage
    results = evaluation.run(*resolve_config(EVALUATE, ["--eval_model", str(out)], ""))
    report = json.loads((model_dir / "eval_test" / "results.json").read_text())
    main = report["results"][report["main"]]
    assert main["accuracy"] > 0.30 and main["num_samples"] == 10000
    assert results[report["main"]]["accuracy"] == main["accuracy"]
    csv_lines = (model_dir / "eval_test" / "per_class.csv").read_text().splitlines()
    assert len(csv_lines) == 11
    assert (model_dir / "eval_test" / "per_class_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_used_output_dir_is_never_overwritten(trained_run):
    out, _ = trained_run
    from cadel_modeling.stages import stage1
    before = (out / "train_log.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        stage1.run(parse_config(["--config", "fashion_mnist_lt", "--output_dir", str(out)]))
    assert (out / "train_log.jsonl").read_text() == before


def test_a_vit_cascade_selects_its_best_epoch_with_the_vit_rule(tmp_path):
    """ViTs score validation with the tau=1 logit-adjusted sum of exits; best_model/ re-evaluated gives that score."""
    from cadel_modeling.stages import stage1
    out = tmp_path / "vit"
    summary = stage1.run(parse_config(["--config", "fashion_mnist_lt", "--backbone", "test_vit", "--n_max", "60",
                                       "--imb_factor", "10", "--val_per_class", "10", "--epochs", "3",
                                       "--batch_size", "16", "--eval_batch_size", "100", "--log_every", "0",
                                       "--output_dir", str(out)]))
    assert summary["selection"] == "val top-1 of the tau=1 logit-adjusted sum of exits (ViT rule)"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda r: r["val_top1"])
    assert (summary["best_epoch"], summary["best_val_top1"]) == (best["epoch"], best["val_top1"])
    model = CadelForImageClassification.from_pretrained(str(out / "best_model"))
    assert model.config.resolved_inference_rule == "sum"
    # stage 2 runs best_model on val again and sweeps tau for the sum rule: its tau = 1 is stage 1's selection score
    stage2.run(*resolve_config(STAGE2, ["--stage1_dir", str(out)], ""))
    sweep = json.loads((out / "stage2_logit_adjustment" / "stage2_results.json").read_text())["val_sweep"]
    assert next(r["top1"] for r in sweep if r["tau"] == 1.0) == pytest.approx(best["val_top1"], abs=1e-6)
