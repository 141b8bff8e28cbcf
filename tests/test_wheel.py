"""The wheel is the product: built from this checkout, installed into a fresh virtual environment away from the
repository, it runs the README's commands for pip users (stage 1, stage 2, evaluation through ``accelerate launch
-m``) and ``cadel-compare`` on a user's image folder, with nothing but what it carries (presets, the metric module,
the remote-code files, the licence)."""
import gzip
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import FASHION_MNIST_DIR, REPO, requires_fashion_mnist

pytestmark = [pytest.mark.slow, requires_fashion_mnist]
TINY = ["--backbone", "test_resnet", "--n_max", "40", "--imb_factor", "10", "--val_per_class", "5", "--epochs", "1",
        "--batch_size", "16", "--eval_batch_size", "50", "--num_workers", "0"]


# the installed package must be the one imported, not a checkout named by PYTHONPATH
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
# A user's long-tailed image folder: 4 Fashion-MNIST classes, PNGs, with val/ and test/ folders.
FOLDER_COUNTS = {"train": [24, 12, 6, 3], "val": [4] * 4, "test": [6] * 4}


def fashion_mnist_folder(root):
    from PIL import Image
    with gzip.open(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    taken = {c: iter(np.flatnonzero(labels == c)) for c in range(4)}
    for split, counts in FOLDER_COUNTS.items():
        for c, count in enumerate(counts):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(count):
                Image.fromarray(images[next(taken[c])]).save(root / split / f"class{c}" / f"{i}.png")


def readme_pip_commands() -> list:
    """The `accelerate launch -m` lines of the README's block for pip users."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- pip users -->\s*```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("accelerate launch -m")]


def test_the_built_wheel_carries_everything_and_runs_the_readme_commands(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("cadel-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("cadel_modeling/config/presets/fashion_mnist_lt.yaml",
                   "cadel_modeling/config/presets/imagenet_lt.yaml",
                   "cadel_modeling/metrics/long_tail_classification/long_tail_classification.py",
                   "cadel_modeling/modeling/modeling_cadel.py", "cadel_modeling/modeling/heads.py",
                   "cadel_modeling/modeling/backbones.py"):
        assert needed in names, needed
    assert any(n.endswith("licenses/LICENSE") for n in names) and any(n.endswith("entry_points.txt") for n in names)
    assert next(dist.glob("cadel-*.tar.gz")).stat().st_size > 0

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=300, env=ENV)
    assert install.returncode == 0, install.stderr
    work = tmp_path / "elsewhere"  # away from the repository: nothing of the checkout is importable from here
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import cadel_modeling; print(cadel_modeling.__file__)"], cwd=work,
                           capture_output=True, text=True, timeout=120, env=ENV)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    assert (venv / "bin" / "cadel-train-stage1").is_file() and (venv / "bin" / "cadel-compare").is_file()

    commands = readme_pip_commands()
    assert [c.split()[3] for c in commands] == ["cadel_modeling.train_stage1", "cadel_modeling.train_stage2",
                                                 "cadel_modeling.evaluate"]
    launch = [str(python), "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    for i, command in enumerate(commands):
        argv = launch + command.split()[2:] + (TINY if i == 0 else [])
        done = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600, env=ENV)
        assert done.returncode == 0, command + "\n" + done.stdout[-2000:] + done.stderr[-3000:]
    run = work / "runs" / "fmnist_lt"
    assert (run / "stage2_logit_adjustment" / "model" / "eval_test" / "results.json").is_file()
    assert (run / "best_model" / "modeling_cadel.py").is_file()

    # cadel-compare on the user's own folder, each stage under `accelerate launch`, 2 recipes x 2 seeds
    fashion_mnist_folder(work / "mine")
    compare = [str(venv / "bin" / "cadel-compare"), "--recipes", "ce", "cadel", "--seeds", "0", "1", "--quick",
               "--launch_args", " ".join(launch[3:]), "--", "--dataset", "imagefolder", "--data_dir", "mine",
               "--imb_factor", "null", "--epochs", "1", "--batch_size", "8", "--num_workers", "0"]
    done = subprocess.run(compare, cwd=work, capture_output=True, text=True, timeout=900, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = work / "runs" / "compare" / "fashion_mnist_lt_if10_e2_quick"
    grid = [(0, "ce"), (0, "cadel"), (1, "ce"), (1, "cadel")]  # one line when a run starts, one when it is done
    assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("[")] == \
        [f"[{k}/4] {r} seed {s}" for k, (s, r) in enumerate(grid, 1) for _ in range(2)]
    saved = json.loads((out / "results.json").read_text())
    assert [(r["seed"], r["recipe"]) for r in saved["runs"]] == grid
    for r in saved["runs"]:  # every run trained on the folder as it is (the flags after `--` reached stage 1)
        info = json.loads((out / r["recipe"] / f"seed{r['seed']}" / "run_info.json").read_text())
        assert info["class_counts"] == FOLDER_COUNTS["train"] and "accelerate.commands.launch" in r["command"]
    diffs = saved["paired_vs_baseline"]["All"]
    for label in ("CADEL", "CADEL + exit weights on val", "CADEL + robust exit rule"):
        expected = [100 * (run["rows"][label]["All"] - base["rows"]["CE + post-hoc LA"]["All"])
                    for run, base in [(saved["runs"][1], saved["runs"][0]), (saved["runs"][3], saved["runs"][2])]]
        assert diffs[label]["values"] == pytest.approx(expected) and diffs[label]["n"] == 2
    assert "| CADEL + robust exit rule |" in (out / "table.md").read_text()
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run(compare, cwd=work, capture_output=True, text=True, timeout=300, env=ENV)
    assert again.returncode == 0 and again.stdout.count("(read back)") == 4  # resumed: nothing retrained
    assert (out / "log.txt").read_text().count("cadel_modeling.train_stage1") == 4
