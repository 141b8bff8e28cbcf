#!/usr/bin/env python
"""Evaluation from a clone: the same command as ``accelerate launch -m cadel_modeling.evaluate``.

    accelerate launch evaluate.py --eval_model runs/fashion_mnist_lt
    accelerate launch evaluate.py --eval_model user/cadel-resnet50-imagenet-lt --data_dir /data/ImageNet_LT
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
    from cadel_modeling.evaluate import main

    raise SystemExit(main())
