"""CADEL stage 1: train the cascade (backbone + two auxiliary exits) jointly with the confidence-bin loss.

    accelerate launch -m cadel_modeling.train_stage1 --config fashion_mnist_lt
    accelerate launch -m cadel_modeling.train_stage1 --config imagenet_lt --data_dir /data/ImageNet_LT
    cadel-train-stage1 --config cifar100_lt --data_dir /data/cifar --report_to tensorboard

Every preset key is also a flag. The resolved config, the training log, checkpoints and the best-on-validation
model are written to --output_dir. Exit codes: 0 done, 2 bad input, 3 diverged, 4 Hub upload failed, 75 preempted
(resume with --resume_from_checkpoint latest).
"""
from .cli import run_command
from .config.schema import STAGE1, RunConfig


def run(cfg: RunConfig) -> dict:
    from .stages import stage1  # here, not at the top: --help and --list_presets answer without loading torch
    return stage1.run(cfg)


def main(argv=None) -> int:
    return run_command(STAGE1, __doc__, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
