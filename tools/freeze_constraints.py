"""Write constraints.txt: the exact version of every package that ``pip install -e .[dev]`` pulls in (direct and
transitive), as installed in the running environment. ``make update-constraints`` runs it in a throw-away virtual
environment that holds the newest releases; ``.ci/install.sh`` installs with ``-c constraints.txt``, so a fresh
machine gets what the suite last passed with instead of whatever was released that morning."""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT_EXTRAS = ("dev",)


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """{canonical name: installed version} of ``root`` and everything it requires, following extras."""
    env = default_environment()
    found: dict[str, str] = {}
    todo = [(root, set(extras))]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, wanted = todo.pop()
        key = (canonicalize_name(name), frozenset(wanted))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement whose marker held but which is not installed: nothing to pin
        found[canonicalize_name(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in wanted | {""}):
                continue
            todo.append((req.name, set(req.extras)))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="constraints.txt")
    args = parser.parse_args(argv)
    pins = closure("cadel", ROOT_EXTRAS)
    pins.pop("cadel", None)
    header = [
        "# Exact versions the full test suite passed with (`make test`), installed by .ci/install.sh with -c.",
        f"# Written by `make update-constraints` (tools/freeze_constraints.py) on {datetime.date.today()}, "
        f"Python {platform.python_version()}, {sys.platform}.",
        "# Library users are not bound by these: setup.cfg keeps ranges. Newest releases: `make test-latest`.",
        "# A release known to be broken is excluded here with a comment naming its upstream issue.",
    ]
    body = [f"{name}=={version}" for name, version in sorted(pins.items())]
    Path(args.output).write_text("\n".join(header + body) + "\n")
    print(f"{args.output}: {len(body)} packages pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
