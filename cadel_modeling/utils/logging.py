"""Logging for the commands: one concise console line per event on the main process, everything (tracebacks
included) in the run's log file once the run has really started."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(is_main_process: bool) -> None:
    logging.basicConfig(format=FORMAT, datefmt="%H:%M:%S",
                        level=logging.INFO if is_main_process else logging.ERROR, force=True)
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
    logging.getLogger().addHandler(handler)
