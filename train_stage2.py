#!/usr/bin/env python
"""CADEL stage 2 from a clone: the same command as ``accelerate launch -m cadel_modeling.train_stage2``.

    accelerate launch train_stage2.py --stage1_dir runs/fashion_mnist_lt
"""
from cadel_modeling.train_stage2 import main

if __name__ == "__main__":
    raise SystemExit(main())
