"""CADEL stage 2 from a stage-1 run: post-hoc logit adjustment with tau chosen on validation (the original's
"stage 2", one forward pass per split), or classifier re-training (cRT); then exit weights learned on validation.

    accelerate launch -m cadel_modeling.train_stage2 --stage1_dir runs/fashion_mnist_lt
    accelerate launch -m cadel_modeling.train_stage2 --stage1_dir runs/imagenet_lt_resnet50 --stage2_method crt

The settings saved with the stage-1 model are the base; the flags below override what stage 2 may change.
"""
from pathlib import Path

from .cli import run_command
from .config.schema import STAGE2, RunConfig


def run(cfg: RunConfig, model_dir: Path) -> dict:
    from .stages import stage2  # here, not at the top: --help and --list_presets answer without loading torch
    return stage2.run(cfg, model_dir)


def main(argv=None) -> int:
    return run_command(STAGE2, __doc__, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
