#!/usr/bin/env python
"""CADEL stage 1: train the cascade (backbone + two auxiliary exits) jointly with the confidence-bin loss.

    accelerate launch train_stage1.py --config fashion_mnist_lt
    accelerate launch train_stage1.py --config imagenet_lt_resnet50 --data_dir /data/ImageNet_LT --epochs 200

Every preset key is also a flag (``--help`` lists them with their defaults). The resolved config, the training log
and the best-on-validation model are written to ``--output_dir``.
"""
from cadel_modeling.config import ConfigError, main_error, parse_config


def main(argv=None):
    try:
        cfg = parse_config(argv, description=__doc__)
    except ConfigError as exc:
        main_error(exc)
    from cadel_modeling import stage1
    return stage1.run(cfg)


if __name__ == "__main__":
    main()
