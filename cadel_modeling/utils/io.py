"""Files written so that a crash or a full disk never leaves half a file where a whole one was: write to a temporary
name beside the target, then rename. JSON and YAML only; nothing here unpickles."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping


def write_json(path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
    os.replace(tmp, path)


def read_json(path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def append_jsonl(path, obj) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(obj) + "\n")


def read_jsonl(path) -> list:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def rewrite_jsonl(path, records: Iterable[Mapping]) -> None:
    """Replace a JSON-lines file atomically (e.g. dropping the records a resumed run will redo)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def command_line() -> str:
    """The command that started this process, as a user would retype it (program name without its folder), with
    any token redacted: it is recorded in run files and printed in retry commands."""
    import sys

    from .secrets import redact
    return redact(" ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
