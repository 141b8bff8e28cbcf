"""Tracking through accelerate (TensorBoard event files read back), the HF-style flat results, the exported splits
of a run reloading as a Hub-style dataset, and a failed push at the end of a real run."""
import json

import pytest

from cadel_modeling.config import parse_config

from conftest import requires_fashion_mnist

pytestmark = [pytest.mark.slow, requires_fashion_mnist]

TINY = ["--config", "fashion_mnist_lt", "--backbone", "test_resnet", "--n_max", "40", "--imb_factor", "10",
        "--val_per_class", "5", "--epochs", "2", "--batch_size", "16", "--eval_batch_size", "50", "--log_every", "1",
        "--num_workers", "0"]


def test_tensorboard_gets_the_step_and_epoch_scalars_and_exported_splits_reload(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cadel_modeling.data import build_datasets, long_tailed_counts
    from cadel_modeling.stages import stage1
    out = tmp_path / "run"
    cfg = parse_config(TINY + ["--output_dir", str(out), "--report_to", "tensorboard", "--export_dataset",
                               str(tmp_path / "exported")])
    stage1.run(cfg)
    events = list((out / "tracking").rglob("events.out.tfevents.*"))
    assert events
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path)).Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    assert {"train/loss", "train/lr", "train/T", "train/cascade_weight_exit1", "train/cascade_weight_exit3",
            "train/images_per_s", "val/top1", "val/medium", "val/few"} <= set(scalars), sorted(scalars)
    assert "val/many" not in scalars  # no class has over 100 images here: an empty group is not logged
    steps_per_epoch = sum(long_tailed_counts(40, 10, 10)) // 16
    assert len(scalars["train/loss"]) == 2 * steps_per_epoch  # one point per optimizer step
    assert len(scalars["val/top1"]) == 2 and sorted(set(scalars["train/T"])) == [0.0, 0.5]

    # the exported splits: train / validation / test with class names, reloadable as a Hub-style dataset
    from datasets import load_from_disk
    exported = load_from_disk(str(tmp_path / "exported"))
    assert sorted(exported) == ["test", "train", "validation"]
    assert exported["train"].features["label"].names[0] == "T-shirt/top"
    original = build_datasets(cfg)
    again = build_datasets(parse_config(["--dataset", "hub", "--hub_dataset_id", str(tmp_path / "exported")]))
    assert again.class_counts == original.class_counts and again.class_names == original.class_names
    assert again.train["label"] == original.train["label"]
    first = again.train[0]["image"].convert("L").tobytes()
    assert first == original.train[0]["image"].convert("L").tobytes()  # the same pixels, embedded
    assert len(again.splits["val"]) == len(original.splits["val"]) and len(again.splits["test"]) == 10000


def test_evaluation_writes_hf_style_flat_results(trained_run):
    from cadel_modeling.cli import resolve_config
    from cadel_modeling.config import EVALUATE
    from cadel_modeling.stages import evaluation
    out, _ = trained_run
    results = evaluation.run(*resolve_config(EVALUATE, ["--eval_model", str(out / "best_model"), "--eval_split",
                                                        "val"], ""))
    flat = json.loads((out / "best_model" / "eval_val" / "all_results.json").read_text())
    assert set(flat) == {"eval_top1", "eval_top5", "eval_many", "eval_medium", "eval_few", "eval_ece", "eval_nll",
                         "eval_macro_f1", "eval_tau", "eval_samples"}
    main = next(iter(results.values()))
    assert flat["eval_top1"] == main["accuracy"] and flat["eval_samples"] == 200 and flat["eval_tau"] == 0.0


def test_a_failed_push_at_the_end_of_a_run_keeps_everything_and_exits_4(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from cadel_modeling.train_stage1 import main

    class Unreachable:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            raise ConnectionError("the Hub cannot be reached")

    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    out = tmp_path / "run"
    assert main(TINY + ["--output_dir", str(out), "--push_to_hub", "--hub_model_id", "me/tiny"]) == 4
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "retry with: cadel-push-to-hub" in err
    assert (out / "best_model" / "model.safetensors").is_file() and (out / "stage1_summary.json").is_file()
    results = json.loads((out / "best_model" / "eval_val" / "results.json").read_text())  # for the card
    assert results["split"] == "val" and results["results"][results["main"]]["num_samples"] == 50
    assert "eval_val" in (out / "best_model" / "README.md").read_text()  # the card lives with its model
