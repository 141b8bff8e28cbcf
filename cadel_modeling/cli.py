"""What the commands share: read the flags (on top of the model's own settings for stage 2 and evaluation), run the
stage, and turn a failure into one line that says what is wrong and an exit code a scheduler can act on.

Exit codes: 0 done; 1 unexpected error (traceback shown); 2 bad input (config, data, checkpoint, model: one line,
the traceback in the run's log or a temporary file, or on screen with ``--debug``); 3 training diverged (non-finite
loss); 4 the Hub upload failed (every local file kept); 75 preempted by a signal (checkpoint written: resume).
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional, Sequence

from .config import ConfigError, RunConfig, load_run_config, parse_config, print_preset_listing
from .config.schema import EVALUATE, STAGE1, STAGE2

EXIT_ERROR, EXIT_USAGE = 1, 2
STAGE_MODULES = {STAGE1: "stage1", STAGE2: "stage2", EVALUATE: "evaluation"}
USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
               ImportError)


def resolve_config(command: str, argv: Sequence[str], description: str) -> RunConfig:
    """Stage 1: defaults < --config < flags. Stage 2 and evaluation start from the run config saved with the model
    they read (the settings that trained it), which the flags may override."""
    first = parse_config(argv, command, description)
    if command == STAGE1:
        return first
    from .modeling.locate import find_model_dir, is_hub_id, run_config_path
    if command == STAGE2:
        if not first.stage1_dir:
            raise ConfigError("--stage1_dir is required: the stage-1 output_dir to start from")
        model_dir = Path(first.stage1_dir) / "best_model"
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} holds no model: run stage 1 with --output_dir {first.stage1_dir} "
                                    f"first (or point --stage1_dir at a stage-1 run folder)")
        base = load_run_config(run_config_path(model_dir))
    else:
        if not first.eval_model:
            raise ConfigError("--eval_model is required: a run folder, a model folder or a Hub model id")
        base = load_run_config(run_config_path(find_model_dir(first.eval_model)))
        if is_hub_id(first.eval_model):  # results of a downloaded model go to a local folder, not the Hub cache
            base["output_dir"] = str(Path("runs") / first.eval_model.replace("/", "__"))
    return parse_config(argv, command, description, base=base)


def _record_traceback(exc: BaseException) -> Path:
    """The traceback into the run's log file when the run has one, else a temporary file; returns where."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(text)
            handler.flush()
            return Path(handler.baseFilename)
    fd, path = tempfile.mkstemp(prefix="cadel-error-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return Path(path)


def run_command(command: str, description: str, argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--list_presets" in argv:
        print_preset_listing()
        return 0
    debug = "--debug" in argv
    from .training.preemption import die_with_parent, started_by_a_launcher
    if started_by_a_launcher():  # never outlive it
        die_with_parent()
    try:
        cfg = resolve_config(command, argv, description)
        stage = importlib.import_module(f".stages.{STAGE_MODULES[command]}", __package__)
        stage.run(cfg)
        return 0
    except Exception as exc:  # noqa: BLE001 - sorted below: known outcomes get a line and a code
        code = getattr(exc, "exit_code", None)
        if code is None and not isinstance(exc, USER_ERRORS):
            raise
        where = _record_traceback(exc)
        if debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        print(f"{'stopped' if code == 75 else 'error'}: {exc}\n(details: {where}"
              f"{'' if debug else '; --debug shows them here'})", file=sys.stderr)
        return code if code is not None else EXIT_USAGE
