"""One writer per run folder: ``<folder>/.cadel.lock`` holds the pid and host of the command writing there.

The lock is an ``flock`` on that file, so the kernel drops it when its process dies, however it dies; the pid and
host inside say who holds it. A second command into the folder is refused with one line naming the holder. A lock
file whose process is gone (the flock is free, and on this host the pid is not running) is reclaimed with a
warning. The lock is taken before anything is written; releasing it removes the file, and the folders that taking
it created when they are still empty, so a refused command leaves no trace.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import List, Optional

from .errors import OutputDirError

logger = logging.getLogger("cadel")

LOCK_NAME = ".cadel.lock"


class RunFolderBusy(OutputDirError):
    """Another live process writes into the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def clear_except_lock(folder: Path) -> None:
    """Remove everything in ``folder`` but the lock file, which belongs to the running command."""
    for entry in folder.iterdir():
        if entry.name != LOCK_NAME:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


class RunLock:
    """``with RunLock(folder):`` holds the folder for this process (see the module docstring)."""

    def __init__(self, folder, what: str = "a cadel run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: Optional[int] = None
        self._created: List[Path] = []
        self.found_empty = False

    def acquire(self) -> RunLock:
        missing = [p for p in [self.folder, *self.folder.parents] if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputDirError(f"cannot create the folder {self.folder}: {exc.strerror or exc}; choose another "
                                 f"folder") from exc
        self._created = missing  # innermost first: removed in that order when left empty
        self.found_empty = not [p for p in self.folder.iterdir() if p.name != LOCK_NAME]
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse(_holder(self.path))
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)  # the holder released (and removed) the file between our open and our flock: retry
        previous = _holder(self.path)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        if previous and previous.get("pid") != me["pid"]:
            if previous.get("host") == me["host"] and _alive(int(previous.get("pid", -1))):
                os.close(fd)  # a file system without flock: the pid is the only evidence, and it runs
                self._refuse(previous)
            logger.warning("%s: reclaimed a stale lock of pid %s on %s (that process is gone)", self.folder,
                           previous.get("pid"), previous.get("host"))
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({**me, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "what": self.what}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _refuse(self, holder: dict) -> None:
        self.release()
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        raise RunFolderBusy(f"{self.folder} is in use by another cadel command ({who}, since "
                            f"{holder.get('started', '?')}); wait for it to finish or choose another folder")

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then finds no file to take over
            os.close(self._fd)
            self._fd = None
        for folder in self._created:
            try:
                folder.rmdir()  # only when empty: a refused or failed-before-writing command leaves nothing
            except OSError:
                break
        self._created = []

    def discard_written(self) -> None:
        """Remove everything in the folder but the lock (what a command that found it empty wrote there)."""
        clear_except_lock(self.folder)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
