"""Shared fixtures. Tests run offline: nothing may reach the Hugging Face Hub."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DATA = REPO.parent / "shared" / "reference" / "data"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real training runs or subprocesses (seconds to a minute each)")


@pytest.fixture(scope="session")
def reference_data():
    if not REFERENCE_DATA.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DATA}")
    return REFERENCE_DATA


requires_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST idx files missing: apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A real 3-epoch stage-1 run (ResNet-18 cascade, light heads) on Fashion-MNIST-LT, shared by several tests."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST idx files missing: apt-get install dataset-fashion-mnist")
    from cadel_modeling.config import parse_config
    from cadel_modeling.stages import stage1
    out = tmp_path_factory.mktemp("runs") / "fmnist"
    cfg = parse_config(["--config", "fashion_mnist_lt", "--epochs", "3", "--output_dir", str(out)])
    summary = stage1.run(cfg)
    return out, summary
