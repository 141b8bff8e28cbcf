#!/usr/bin/env python
"""Evaluate a CADEL model (a run folder, a saved model folder or a Hub model id) on a split.

    accelerate launch evaluate.py --eval_model runs/fashion_mnist_lt
    accelerate launch evaluate.py --eval_model runs/in_lt_r50/stage2_logit_adjustment/model --eval_split val
    accelerate launch evaluate.py --eval_model user/cadel-resnet50-imagenet-lt --data_dir /data/ImageNet_LT

Prints overall / many / medium / few top-1, top-5, ECE and NLL for the model's inference rule (before and after
logit adjustment) and for each exit; writes results.json, per_class.csv and per_class_accuracy.png.
"""
if __name__ == "evaluate":
    # This file was imported as ``evaluate``: a process started in the repository root has this folder first on
    # sys.path, where the script shadows the Hugging Face ``evaluate`` package. Hand the importer the real package:
    # find it on the rest of sys.path, execute it under the same name and let it replace this module.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _here = os.path.dirname(os.path.abspath(__file__))
    _search = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]
    _spec = importlib.machinery.PathFinder.find_spec("evaluate", _search)
    if _spec is None:
        raise ImportError("the Hugging Face `evaluate` package is not installed (pip install evaluate); "
                          f"{__file__} is cadel's evaluation script, not that package")
    _package = importlib.util.module_from_spec(_spec)
    sys.modules["evaluate"] = _package
    _spec.loader.exec_module(_package)
elif __name__ == "__main__":
    from cadel_modeling.config import ConfigError, main_error, parse_config_with_base
    from cadel_modeling.hub import find_model_dir, run_config_path

    try:
        cfg = parse_config_with_base(None, __doc__, "eval_model", lambda ref: run_config_path(find_model_dir(ref)))
    except (ConfigError, FileNotFoundError) as exc:
        main_error(exc)
    from cadel_modeling import evaluation

    evaluation.run(cfg)
