"""CI must not go green by skipping: with CI=true a missing data file stops the run with a message."""
import os
import subprocess
import sys

from conftest import REPO


def run_collection(**env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_losses.py"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_ci_with_fashion_mnist_hidden_fails_with_a_clear_message(tmp_path):
    hidden = run_collection(CI="true", CADEL_TEST_FASHION_MNIST_DIR=str(tmp_path / "hidden"))
    assert hidden.returncode != 0
    message = hidden.stdout + hidden.stderr
    assert "CI=true but" in message and "apt-get install dataset-fashion-mnist" in message


def test_outside_ci_the_same_checkout_collects():
    collected = run_collection(CI="false", CADEL_TEST_FASHION_MNIST_DIR="/nonexistent")
    assert collected.returncode == 0, collected.stdout + collected.stderr
