"""The wheel is the product: built from this checkout, installed into a fresh virtual environment away from the
repository, it runs the README's commands for pip users (stage 1, stage 2, evaluation through ``accelerate launch
-m``) with nothing but what it carries (presets, the metric module, the remote-code files, the licence)."""
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, requires_fashion_mnist

pytestmark = [pytest.mark.slow, requires_fashion_mnist]
TINY = ["--backbone", "test_resnet", "--n_max", "40", "--imb_factor", "10", "--val_per_class", "5", "--epochs", "1",
        "--batch_size", "16", "--eval_batch_size", "50", "--num_workers", "0"]


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
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    work = tmp_path / "elsewhere"  # away from the repository: nothing of the checkout is importable from here
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import cadel_modeling; print(cadel_modeling.__file__)"], cwd=work,
                           capture_output=True, text=True, timeout=120)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    assert (venv / "bin" / "cadel-train-stage1").is_file()

    commands = readme_pip_commands()
    assert [c.split()[3] for c in commands] == ["cadel_modeling.train_stage1", "cadel_modeling.train_stage2",
                                                 "cadel_modeling.evaluate"]
    launch = [str(python), "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    for i, command in enumerate(commands):
        argv = launch + command.split()[2:] + (TINY if i == 0 else [])
        done = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, command + "\n" + done.stdout[-2000:] + done.stderr[-3000:]
    run = work / "runs" / "fmnist_lt"
    assert (run / "stage2_logit_adjustment" / "model" / "eval_test" / "results.json").is_file()
    assert (run / "best_model" / "modeling_cadel.py").is_file()
