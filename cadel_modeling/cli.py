"""What the commands share: read the flags (on top of the model's own settings for stage 2 and evaluation), run the
stage, and turn a failure into one line that says what is wrong and an exit code a scheduler can act on.

Exit codes: 0 done; 1 internal error (a bug: one line pointing at the traceback); 2 bad input (cadel's
``UserError`` types only: config, data, checkpoint, model, output folder; one line); 3 training diverged (non-finite
loss); 4 the Hub upload failed (every local file kept); 75 preempted by a signal (checkpoint written: resume). The
traceback goes to the run's log or a temporary file (on screen with ``--debug``).

The command holds its run folder's lock (``utils/run_lock.py``) from before anything is written until it exits. A
stage-1 run that fails before its first checkpoint leaves nothing behind: its folder is not claimed.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from .config import ConfigError, RunConfig, load_run_config, parse_config, print_preset_listing
from .config.schema import STAGE1, STAGE2
from .run_layout import BEST_MODEL, holds_model, run_dir_of
from .utils.errors import MissingInputError
from .utils.logging import close_log_file
from .utils.run_lock import RunLock
from .utils.secrets import redact

EXIT_ERROR = 1


def resolve_config(command: str, argv: Sequence[str], description: str) -> Tuple[RunConfig, Optional[Path]]:
    """The config and the model folder the command reads, located once here (None for stage 1; for a Hub model id,
    downloaded into the cache). Stage 1: defaults < --config < flags. Stage 2 and evaluation start from the run
    config saved with the model they read (the settings that trained it), which the flags may override."""
    first = parse_config(argv, command, description)
    if command == STAGE1:
        return first, None
    from .modeling.locate import find_model_dir, is_hub_id, run_config_path
    if command == STAGE2:
        if not first.stage1_dir:
            raise ConfigError("--stage1_dir is required: the stage-1 output_dir to start from")
        model_dir = Path(first.stage1_dir) / BEST_MODEL
        if not holds_model(model_dir):
            raise MissingInputError(f"{model_dir} holds no model: run stage 1 with --output_dir {first.stage1_dir} "
                                    f"first (or point --stage1_dir at a stage-1 run folder)")
        base = load_run_config(run_config_path(model_dir))
    else:
        if not first.eval_model:
            raise ConfigError("--eval_model is required: a run folder, a model folder or a Hub model id")
        model_dir = find_model_dir(first.eval_model)
        base = load_run_config(run_config_path(model_dir))
        if is_hub_id(first.eval_model):  # results of a downloaded model go to a local folder, not the Hub cache
            base["output_dir"] = str(Path("runs") / first.eval_model.replace("/", "__"))
    return parse_config(argv, command, description, base=base), model_dir


def _record_traceback(exc: BaseException) -> Path:
    """The traceback into the run's log file when the run has one, else a temporary file; returns where."""
    text = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and getattr(handler, "cadel", False):  # the run's, not a host's
            handler.stream.write(text)
            handler.flush()
            return Path(handler.baseFilename)
    fd, path = tempfile.mkstemp(prefix="cadel-error-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return Path(path)


def message(exc: BaseException) -> str:
    """The message of ``exc``. An error raised in a DataLoader worker reaches us with the worker's whole traceback in
    its message: its last line is the error itself."""
    text = redact(str(exc)).strip()  # an echoed flag or a library's message may quote the token
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text or type(exc).__name__


def run_folder(command: str, cfg: RunConfig, model_dir: Optional[Path]) -> Path:
    """The folder a command writes into, whose lock it holds: the stage-1 run folder for stage 1 and stage 2 (its
    ``stage2_*`` lives there); for evaluation the run folder of a local model ``model_dir``, or output_dir for a Hub
    model."""
    if command == STAGE1:
        return Path(cfg.output_dir)
    if command == STAGE2:
        return Path(cfg.stage1_dir)
    return run_dir_of(model_dir) if Path(cfg.eval_model).is_dir() else Path(cfg.output_dir)


def _unclaim(lock: RunLock) -> None:
    """A stage-1 run that started in an empty folder and failed before its first checkpoint has nothing to resume:
    remove what it wrote, so that the folder is not claimed and the corrected command runs there."""
    from .training.checkpointing import list_checkpoints
    if lock.found_empty and not list_checkpoints(lock.folder):
        close_log_file()  # the traceback then goes to a temporary file
        lock.discard_written()


def run_command(command: str, description: str, argv: Optional[Sequence[str]],
                stage_run: Callable[..., object]) -> int:
    """Run ``stage_run`` (the command's stage) on the config the flags resolve to, and on the model folder it reads
    (stage 2, evaluation); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--list_presets" in argv:
        print_preset_listing()
        return 0
    debug = "--debug" in argv
    from .training.preemption import die_with_parent, started_by_a_launcher
    if started_by_a_launcher():  # never outlive it
        die_with_parent()
    lock = None
    try:
        cfg, model_dir = resolve_config(command, argv, description)
        if os.environ.get("RANK", "0") == "0":  # one lock per run, held by the main process
            lock = RunLock(run_folder(command, cfg, model_dir), what=f"cadel {command}")
        with lock or nullcontext():
            try:
                stage_run(cfg) if model_dir is None else stage_run(cfg, model_dir)
            except Exception:
                if command == STAGE1 and lock is not None:
                    _unclaim(lock)
                raise
        return 0
    except Exception as exc:  # noqa: BLE001 - sorted below: every outcome gets a line and a code
        code = getattr(exc, "exit_code", None)
        where = _record_traceback(exc)
        if debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        details = f"(details: {where}{'' if debug else '; --debug shows them here'})"
        if code is None:
            print(f"internal error: {type(exc).__name__}: {message(exc).splitlines()[0]}\nThis is a bug in cadel or a "
                  f"library it uses, not a problem with your input; please report it with the traceback {details}",
                  file=sys.stderr)
            return EXIT_ERROR
        print(f"{'stopped' if code == 75 else 'error'}: {message(exc)}\n{details}", file=sys.stderr)
        return code
