#!/usr/bin/env python
"""CADEL stage 1 from a clone: the same command as ``accelerate launch -m cadel_modeling.train_stage1``.

    accelerate launch train_stage1.py --config fashion_mnist_lt
    accelerate launch train_stage1.py --config imagenet_lt --data_dir /data/ImageNet_LT
"""
from cadel_modeling.train_stage1 import main

if __name__ == "__main__":
    raise SystemExit(main())
