"""The first hour of a user with their own data (issue 25's done-when path), through the commands as typed: an
already long-tailed 10-class image folder with its own val/ and test/, run with the demo preset as the recipe."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import FASHION_MNIST_DIR, REPO, requires_fashion_mnist

pytestmark = [pytest.mark.slow, requires_fashion_mnist]

TRAIN_COUNTS = [60, 44, 32, 24, 17, 13, 9, 7, 6, 5]  # already long-tailed: fewer than the preset's n_max of 500
EVAL_PER_CLASS = 5
NAMES = ["top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def write_fashion_mnist_folder(root):
    """Fashion-MNIST PNGs as root/{train,val,test}/<class>/<n>.png, with TRAIN_COUNTS training images per class."""
    from cadel_modeling.data.fashion_mnist import _read_idx
    images = _read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    for c, name in enumerate(NAMES):
        rows = np.flatnonzero(labels == c)
        split_sizes = {"train": TRAIN_COUNTS[c], "val": EVAL_PER_CLASS, "test": EVAL_PER_CLASS}
        start = 0
        for split, n in split_sizes.items():
            for i, row in enumerate(rows[start:start + n]):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[row]).save(path)
            start += n


def run(script, *args):
    done = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_own_long_tailed_folder_with_the_demo_recipe_trains_on_the_data_as_found(tmp_path):
    data, out = tmp_path / "my_lt_data", tmp_path / "run"
    write_fashion_mnist_folder(data)
    stage1 = run("train_stage1.py", "--config", "fashion_mnist_lt", "--dataset", "imagefolder", "--data_dir", data,
                 "--backbone", "test_resnet", "--epochs", 1, "--output_dir", out, "--log_every", 1)
    info = json.loads((out / "run_info.json").read_text())
    assert info["class_names"] == sorted(NAMES)
    assert info["class_counts"] == [TRAIN_COUNTS[NAMES.index(n)] for n in sorted(NAMES)]  # the folder's own counts
    log = (out / "train.log").read_text()
    assert "the preset's settings of its own dataset (n_max=500, imb_factor=100.0)" in log  # said once, in the log
    steps = sum(TRAIN_COUNTS) // 64  # the preset's batch of 64 (an incomplete last batch is dropped)
    step_lines = [line for line in log.splitlines() if " step " in line and "img/s ETA" in line]
    assert len(step_lines) == steps and f"epoch 1/1 step {steps}/{steps} loss " in step_lines[-1]
    assert f"epoch 1/1 step 1/{steps} loss" in stage1.stderr  # plain lines on a non-terminal stderr too

    run("train_stage2.py", "--stage1_dir", out)
    stage2_results = json.loads((out / "stage2_logit_adjustment" / "stage2_results.json").read_text())
    assert stage2_results["tau"] in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)  # the preset's grid
    run("evaluate.py", "--eval_model", out)
    results = json.loads((out / "stage2_logit_adjustment" / "eval_test" / "results.json").read_text())
    assert results["results"][results["main"]]["num_samples"] == 10 * EVAL_PER_CLASS
