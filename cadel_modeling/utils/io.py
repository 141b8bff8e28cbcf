"""Files written so that a crash or a full disk never leaves half a file where a whole one was: write to a temporary
name beside the target, then rename. JSON and YAML only; nothing here unpickles."""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping

from .errors import DiskFullError


def write_text_atomic(path, text: str) -> None:
    """Write under a temporary name, then rename: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def free_bytes(folder) -> int:
    """Free space on the file system holding ``folder`` (or its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


@contextmanager
def disk_space_guard(folder, needed: int, cleanup=None):
    """Running out of space while writing ``needed`` bytes into ``folder`` becomes a ``DiskFullError`` that names
    the folder, the free space and the space needed. torch's writer says only "[enforce fail at
    inline_container.cc] unexpected pos", so a write that fails while less than ``needed`` is free counts too.
    ``cleanup`` removes the partial output (after the free space is read)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        free = free_bytes(folder)
        if cleanup is not None:
            cleanup()
        if not (isinstance(exc, OSError) and exc.errno == errno.ENOSPC or free < needed):
            raise
        raise DiskFullError(f"no space left writing to {folder}: {free / 2**20:.1f} MiB free, about "
                            f"{needed / 2**20:.1f} MiB needed; free space there (or choose another folder) and rerun "
                            f"(a stage-1 run resumes with --resume_from_checkpoint latest)") from exc


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
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def command_line() -> str:
    """The command that started this process, as a user would retype it (program name without its folder), with
    any token redacted: it is recorded in run files and printed in retry commands."""
    import sys

    from .secrets import redact
    return redact(" ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
