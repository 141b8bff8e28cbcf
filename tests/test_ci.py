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


SKIPPING = '''
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("no reason CI would accept")
'''


def run_with_project_conftest(tmp_path, ci: str) -> subprocess.CompletedProcess:
    """pytest on a two-test file (one passes, one skips), with tests/conftest.py loaded as a plugin and the data
    files CI checks for present."""
    fashion = tmp_path / "fashion"
    fashion.mkdir(exist_ok=True)
    (fashion / "train-images-idx3-ubyte.gz").touch()
    (tmp_path / "test_tiny.py").write_text(SKIPPING)
    env = {**os.environ, "CI": ci, "CADEL_TEST_FASHION_MNIST_DIR": str(fashion), "CADEL_REFERENCE_DATA": str(fashion),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
                           "test_tiny.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)


def test_a_skip_fails_the_run_under_ci_and_says_which_test(tmp_path):
    ci = run_with_project_conftest(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "SKIPPED (not allowed in CI) test_tiny.py::test_skips: no reason CI would accept" in ci.stdout
    assert "1 passed, 1 skipped" in ci.stdout
    local = run_with_project_conftest(tmp_path, "false")
    assert local.returncode == 0 and "not allowed in CI" not in local.stdout, local.stdout + local.stderr


def test_only_allow_listed_skips_pass_under_ci():
    from types import SimpleNamespace

    from conftest import CI_ALLOWED_SKIPS, disallowed_skips
    skipped = [SimpleNamespace(nodeid="tests/test_gpu.py::test_cuda[a]", skipped=True, longrepr=("f", 1, "no GPU")),
               SimpleNamespace(nodeid="tests/test_docs.py::test_outputs", skipped=True, longrepr=("f", 2, "no README"))]
    expected = SimpleNamespace(nodeid="tests/test_x.py::test_xfail", skipped=True, wasxfail="known", longrepr="")
    allowed = {"tests/test_gpu.py::test_cuda": "needs a CUDA device"}
    assert disallowed_skips(skipped + [expected], allowed) == [("tests/test_docs.py::test_outputs", "no README")]
    assert all(reason.strip() for reason in CI_ALLOWED_SKIPS.values())  # every allowed skip says why
