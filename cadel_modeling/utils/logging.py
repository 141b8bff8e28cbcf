"""Logging for the commands: one concise console line per event on the main process, everything (tracebacks
included) in the run's log file once the run has really started."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(is_main_process: bool) -> None:
    """One console handler of ours on the root logger (others, e.g. a test's log capture, are left alone); a run's
    log file from an earlier run in this process is closed."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "cadel", False)]:
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    console.cadel = True
    root.addHandler(console)
    root.setLevel(logging.INFO if is_main_process else logging.ERROR)
    import datasets
    import transformers
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file is noise
    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def log_to_file(path: Optional[Path]) -> None:
    """Also write every record (with tracebacks) to ``path``; called on the main process once the run's folder is
    its own (a refused command writes nothing there)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    handler.cadel = True
    logging.getLogger().addHandler(handler)


def close_log_file() -> None:
    """Stop writing to the run's log file (its folder is about to be removed)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "cadel", False) and isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def bars_shown() -> bool:
    """tqdm bars on a terminal; in a log file (not a terminal) the ``--log_every`` lines say enough and redrawn bars
    would bury them. ``CADEL_PROGRESS=1`` forces the bars, ``CADEL_PROGRESS=0`` turns them off."""
    import os
    import sys
    forced = os.environ.get("CADEL_PROGRESS")
    return forced == "1" if forced in ("0", "1") else sys.stderr.isatty()


def progress(iterable=None, *, main: bool = True, **kwargs):
    """A tqdm bar on the main process when ``bars_shown()``."""
    from tqdm.auto import tqdm
    return tqdm(iterable, disable=not (main and bars_shown()), leave=False, **kwargs)


def lines_above_bars():
    """While bars are drawn, console log lines are written above them (tqdm.write), not through them."""
    import contextlib

    from tqdm.contrib.logging import logging_redirect_tqdm
    return logging_redirect_tqdm() if bars_shown() else contextlib.nullcontext()
