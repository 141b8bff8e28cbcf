#!/usr/bin/env python
"""CADEL stage 2 from a stage-1 run: post-hoc logit adjustment with tau chosen on validation (the original's
"stage 2", one forward pass per split), or classifier re-training (cRT).

    accelerate launch train_stage2.py --stage1_dir runs/fashion_mnist_lt
    accelerate launch train_stage2.py --stage1_dir runs/in_lt_r50 --tau_grid "[0.5, 1.0, 1.5, 2.0]"

The stage-1 run's config is the base; any key given here overrides it.
"""
from pathlib import Path

from cadel_modeling.config import ConfigError, main_error, parse_config_with_base


def main(argv=None):
    try:
        cfg = parse_config_with_base(argv, __doc__, "stage1_dir", lambda d: Path(d) / "config.yaml")
    except ConfigError as exc:
        main_error(exc)
    from cadel_modeling import stage2
    return stage2.run(cfg)


if __name__ == "__main__":
    main()
