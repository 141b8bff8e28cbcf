"""A fresh machine installs what was tested: constraints.txt pins every package that ``pip install -e .[dev]``
pulls in, each pin satisfies setup.cfg's range, and the installer uses it."""
import configparser
import os
import re
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


def test_the_installer_uses_the_constraints_for_every_pip_install():
    script = (REPO / ".ci" / "install.sh").read_text()
    assert "CONSTRAINTS=${CONSTRAINTS-constraints.txt}" in script
    installs = [line for line in script.splitlines() if re.search(r"\$PIP\b", line) and not line.startswith("PIP=")]
    pip = next(line for line in script.splitlines() if line.startswith("PIP="))
    assert "-c $CONSTRAINTS" in pip and len(installs) == 2
