"""Shared fixtures. Tests run offline: nothing may reach the Hugging Face Hub."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `pytest -n 2` on a 2-core machine: one thread per worker (and for the trainers it starts). torch's default of one
# thread per core puts 4+ busy threads on 2 cores: measured, the suite took 20 minutes that way and 6 with this
# (docs/testing.md).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
# The real ImageNet-LT/iNat18 counts and split lists live beside the repository (never committed).
REFERENCE_DATA = Path(os.environ.get("CADEL_REFERENCE_DATA", REPO.parent / "shared" / "reference" / "data"))
# Overridable so that a test can hide the files and check that CI refuses to run without them.
FASHION_MNIST_DIR = Path(os.environ.get("CADEL_TEST_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
# Under CI=true every skip fails the run, except the tests listed here (node id prefix: why CI may skip it). Empty
# today: the data files CI needs are checked before any test runs (pytest_configure), and no test needs a GPU.
CI_ALLOWED_SKIPS: dict = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real training runs or subprocesses (seconds to a minute each)")
    # In CI a missing data file must fail the run, not skip the tests that matter most (real training, signals,
    # 2-process runs): a green CI that skipped them would prove nothing.
    if IN_CI:
        missing = [str(p) for p in (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz", REFERENCE_DATA)
                   if not p.exists()]
        if missing:
            raise pytest.UsageError(
                f"CI=true but {', '.join(missing)} not found: install the Fashion-MNIST files "
                "(apt-get install dataset-fashion-mnist) and put the reference data beside the repository "
                "(or point CADEL_REFERENCE_DATA at it); outside CI these tests are skipped instead")


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


def disallowed_skips(reports, allowed: dict) -> list:
    """Node ids and reasons of the skipped tests (expected failures aside) that no ``allowed`` prefix covers."""
    return [(r.nodeid, (r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)).removeprefix("Skipped: "))
            for r in reports
            if r.skipped and not hasattr(r, "wasxfail") and not any(r.nodeid.startswith(p) for p in allowed)]


_skipped_reports = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped_reports.append(report)


def pytest_sessionfinish(session, exitstatus):
    # A green CI that skipped a test would prove nothing about it. Only the controller decides (xdist forwards
    # every worker's reports to it).
    if not IN_CI or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    skips = disallowed_skips(_skipped_reports, CI_ALLOWED_SKIPS)
    if skips:
        session.config._ci_skips = skips
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skips = getattr(config, "_ci_skips", [])
    if skips:
        terminalreporter.section("skips under CI=true", sep="=", red=True)
        for nodeid, reason in skips:
            terminalreporter.line(f"SKIPPED (not allowed in CI) {nodeid}: {reason}", red=True)
        terminalreporter.line("CI=true: a skipped test fails the run; fix what it needs, or add it to "
                              "CI_ALLOWED_SKIPS in tests/conftest.py with the reason CI may skip it", red=True)
