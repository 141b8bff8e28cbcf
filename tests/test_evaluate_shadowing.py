"""The top-level evaluate.py script must not break ``import evaluate`` (the Hugging Face package) for any process
started in the repository root, and must still run as a script."""
import subprocess
import sys

import pytest

from conftest import REPO


def test_import_evaluate_in_this_process_is_the_package():
    import evaluate
    assert hasattr(evaluate, "load") and hasattr(evaluate, "EvaluationModule")
    assert "site-packages" in evaluate.__file__ or "evaluate/__init__.py" in evaluate.__file__.replace("\\", "/")


@pytest.mark.slow
def test_import_from_repo_root_gets_the_package_and_script_still_runs():
    # `python -c` puts the current directory (the repo root, where evaluate.py lives) first on sys.path.
    code = ("import evaluate, sys; assert sys.path[0] in ('', '.'); "
            "print(evaluate.__name__, hasattr(evaluate, 'load'), evaluate.__file__.endswith('__init__.py'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["evaluate", "True", "True"]
    # Running the script itself from the root: it imports cadel_modeling, which imports the evaluate package.
    help_out = subprocess.run([sys.executable, "evaluate.py", "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
    assert help_out.returncode == 0, help_out.stderr
    assert "--eval_model" in help_out.stdout and "Evaluation: what is evaluated" in help_out.stdout


def test_script_without_package_gives_a_clear_error(tmp_path, monkeypatch):
    """Imported as `evaluate` with no package on the path, the script says what is missing."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("evaluate", REPO / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", [str(REPO)])
    monkeypatch.delitem(sys.modules, "evaluate", raising=False)
    with pytest.raises(ImportError, match="pip install evaluate"):
        spec.loader.exec_module(module)
