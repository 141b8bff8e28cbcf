"""Evaluate a CADEL model (a run folder, a saved model folder or a Hub model id) on a split.

    accelerate launch -m cadel_modeling.evaluate --eval_model runs/fashion_mnist_lt
    accelerate launch -m cadel_modeling.evaluate --eval_model user/cadel-resnet50-imagenet-lt --data_dir /data/IN_LT

Prints overall / many / medium / few top-1, top-5, ECE and NLL for the model's inference rule (before and after
logit adjustment) and for each exit; writes results.json, all_results.json, per_class.csv and per_class_accuracy.png.
"""
from pathlib import Path
from typing import Dict

from .cli import run_command
from .config.schema import EVALUATE, RunConfig


def run(cfg: RunConfig, model_dir: Path) -> Dict[str, dict]:
    from .stages import evaluation  # here, not at the top: --help and --list_presets answer without loading torch
    return evaluation.run(cfg, model_dir)


def main(argv=None) -> int:
    return run_command(EVALUATE, __doc__, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
