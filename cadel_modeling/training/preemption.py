"""Stopping cleanly when asked: SIGTERM/SIGINT become a flag checked between steps (so a checkpoint is written
before exiting), and a trainer never outlives the launcher that started it.

``accelerate launch`` does not pass a signal on to a single trainer process, and after a SIGKILL of the launcher its
trainers would keep running, orphaned (measured with accelerate 1.15). So each trainer asks the kernel for SIGTERM
when its parent dies (Linux ``PR_SET_PDEATHSIG``) and, everywhere, a watcher thread turns a change of parent into
SIGTERM. A preempted run exits with ``EXIT_PREEMPTED`` (75, EX_TEMPFAIL: "try again"), so schedulers requeue it.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading

logger = logging.getLogger("cadel")

EXIT_PREEMPTED = 75   # EX_TEMPFAIL: the run was interrupted, resume it
PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 0.5


class Preempted(RuntimeError):
    """Training stopped on a signal after writing a checkpoint; resume with ``--resume_from_checkpoint latest``."""

    exit_code = EXIT_PREEMPTED


LAUNCHERS = ("accelerate", "torchrun", "torch.distributed.run", "torch.distributed.launch")


def started_by_a_launcher() -> bool:
    """Whether this process was started by ``accelerate launch`` or torchrun (not by a shell, where dying with the
    parent would break ``nohup``): a rank variable is set, or the parent's command line names a launcher."""
    if os.environ.get("LOCAL_RANK") is not None:
        return True
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            parent = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(name in parent for name in LAUNCHERS)


def die_with_parent() -> None:
    """Make this process receive SIGTERM when its parent (the launcher) dies, however it dies."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

    def watch():
        stop = threading.Event()
        while not stop.wait(WATCH_INTERVAL_S):
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="cadel-parent-watch", daemon=True).start()


class Preemption:
    """Turns SIGTERM/SIGINT into ``requested`` (and records which signal), restored on exit."""

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.requested:
            logger.warning("received %s: finishing this step, then checkpointing", signal.Signals(signum).name)
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
