"""A fresh machine installs what was tested: constraints.txt pins every package that ``pip install -e .[dev]``
pulls in, each pin satisfies setup.cfg's range, and the installer uses it."""
import configparser
import os
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from freeze_constraints import closure  # noqa: E402


def pins() -> dict:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(p) == 2 for p in pairs), "every constraint is an exact pin: name==version"
    return {canonicalize_name(name): version for name, version in pairs}


def declared_requirements() -> list:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines() + cfg["options.extras_require"]["dev"].splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.strip().startswith("#")]


def test_every_declared_requirement_is_pinned_inside_its_range():
    pinned = pins()
    for req in declared_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} outside {req}"


def test_constraints_match_this_environment_for_every_installed_dependency():
    """The suite runs on what constraints.txt names: every package of the closure installed here is at its pin
    (a stale constraints file, or an install that ignored it, fails here). `make test-latest` runs on newer
    releases on purpose, so there it does not apply."""
    if os.environ.get("CADEL_LATEST_RELEASES"):
        pytest.skip("make test-latest: the newest releases, not the pins")
    pinned = pins()
    installed = closure("cadel", ("dev",))
    installed.pop("cadel", None)
    assert set(installed) <= set(pinned), sorted(set(installed) - set(pinned))
    assert {n: v for n, v in installed.items() if pinned[n] != v} == {}


def run_installer(tmp_path, constraints, *args) -> list:
    """Run .ci/install.sh with a stand-in interpreter in a folder with a space in its name; the argument lists of
    its pip calls, as the interpreter received them. apt-get and sudo stand-ins fail, so the machine is never
    changed even where the Fashion-MNIST files are missing."""
    bin_dir, log = tmp_path / "stand ins", tmp_path / "calls.txt"
    bin_dir.mkdir(exist_ok=True)
    log.unlink(missing_ok=True)
    for name, body in (("python 3", f'for a in "$@"; do printf "%s\\0" "$a"; done >> "{log}"; echo >> "{log}"'),
                       ("apt-get", "exit 1"), ("sudo", "exit 1")):
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CONSTRAINTS"}
    env.update(PYTHON=str(bin_dir / "python 3"), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
               **({} if constraints is None else {"CONSTRAINTS": constraints}))
    subprocess.run(["bash", str(REPO / ".ci" / "install.sh"), *args], env=env, check=True, capture_output=True)
    calls = [line.split("\0")[:-1] for line in log.read_text().splitlines()]
    return [call[2:] for call in calls if call[:2] == ["-m", "pip"]]


def test_the_installer_gives_every_pip_install_the_constraints_each_path_one_word(tmp_path):
    pip = ["install", "-q", "--disable-pip-version-check"]
    pins = str(tmp_path / "my pins" / "constraints.txt")  # a space in the path: still one argument
    assert run_installer(tmp_path, pins, "dev") == [pip + ["-c", pins, "torch", "torchvision"],
                                                    pip + ["-c", pins, "-e", ".[dev]"]]
    assert run_installer(tmp_path, None) == [pip + ["-c", "constraints.txt", "torch", "torchvision"],
                                             pip + ["-c", "constraints.txt", "-e", "."]]
    assert run_installer(tmp_path, "", "dev") == [pip + ["torch", "torchvision"], pip + ["-e", ".[dev]"]]  # latest
