"""The stage-1 run folder: what is in it, whether a command may write there, and what a resume may change.

Everything here reads only, except ``claim_output_dir`` (called once every check has passed). The lock file of the
command holding the folder (``utils/run_lock.py``) is the command's, not the run's: it is never counted or removed.

A resumed run keeps the settings that change what its remaining epochs compute (``result_settings``, recorded in
every checkpoint): a change is refused unless ``--allow_changed_config``, and then logged and recorded in
``run_info.json`` (old and new values, the epoch it took effect). ``--epochs`` may change: the T and lr schedules
keep the epoch count the run started with (``schedule_epochs``) and hold their final values after it, so T never
rises again (docs/reliability.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..config import RunConfig
from ..config.schema import FIELDS, STAGE1, fields_of
from ..run_layout import (
    CARD_FILE,
    EVAL_PREFIX,
    REPLACED_SUFFIX,
    RUN_FILES,
    RUN_FOLDERS,
    RUN_INFO_FILE,
    RUN_MARKERS,
    SAVING_SUFFIX,
    STAGE2_PREFIX,
)
from ..training.checkpointing import CheckpointError, checkpoint_root, latest_valid, list_checkpoints, verify
from ..utils.errors import ConfigError, OutputDirError
from ..utils.io import read_json
from ..utils.run_lock import LOCK_NAME, clear_except_lock

logger = logging.getLogger("cadel")

def folder_state(out: Path) -> str:
    """'empty' (missing or empty), 'run' (a cadel run folder) or 'other' (holds files cadel did not write)."""
    entries = [p for p in out.iterdir() if p.name != LOCK_NAME] if out.is_dir() else []  # the lock is the command's
    if not entries:
        return "empty"
    # a model folder's half-written save counts as the folder
    names = {p.name.removesuffix(SAVING_SUFFIX).removesuffix(REPLACED_SUFFIX) for p in entries}
    cadel = set(RUN_FILES) | set(RUN_FOLDERS) | {n for n in names if n.startswith((STAGE2_PREFIX, EVAL_PREFIX))} | \
        {CARD_FILE}
    return "run" if names & set(RUN_MARKERS) and names <= cadel else "other"


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run resumes, with what the checks need, each file read once: the checkpoint's metadata
    (``cadel_checkpoint.json``), the output folder's ``run_info.json`` ({} when there is none) and whether the
    checkpoint belongs to another run than the one the folder holds (resuming it there would replace that run)."""

    path: Path
    meta: dict
    run_info: dict
    foreign: bool


def read_run_info(out: Path) -> dict:
    path = out / RUN_INFO_FILE
    return read_json(path) if path.is_file() else {}


def resume_target(cfg: RunConfig) -> Optional[Resume]:
    """The checkpoint to resume, checked (read-only); None for a fresh start."""
    out = Path(cfg.output_dir)
    if not cfg.resume_from_checkpoint:
        return None
    state = folder_state(out)
    if cfg.resume_from_checkpoint != "latest":
        path = Path(cfg.resume_from_checkpoint)
        meta = verify(path)
        info = read_run_info(out) if state == "run" else {}  # only a run folder holds a run to replace
    else:
        info = read_run_info(out)
        found = latest_valid(out, info.get("run_id"))
        if found is None and state != "empty":
            what = "no valid checkpoint" if checkpoint_root(out).is_dir() else "no checkpoints/ folder"
            raise CheckpointError(f"--resume_from_checkpoint latest: {out} holds {what} of its run to resume; pass "
                                  f"--overwrite_output_dir to start over there, or choose another --output_dir")
        if found is None:  # an empty folder: a fresh start, so 'latest' is safe in a restart loop
            return None
        path, meta = found
        newest = list_checkpoints(out)[-1]
        if path != newest:
            logger.warning("resuming from %s, not the newest checkpoint folder %s (see the warnings above)", path.name,
                           newest.name)
    foreign = state == "run" and meta.get("run_id") != info.get("run_id")
    return Resume(path, meta, info, foreign)


def check_output_dir(cfg: RunConfig, resume: Optional[Resume]) -> None:
    """Refuse to write into a used output_dir unless resuming its own run or told to overwrite (read-only)."""
    out = Path(cfg.output_dir)
    state = folder_state(out)
    foreign = resume.path if resume is not None and resume.foreign else None
    if state == "other":
        raise OutputDirError(f"output_dir {out} holds files that cadel did not write; choose an empty or new "
                             f"--output_dir (cadel never deletes files it does not know)")
    if state == "run" and foreign is not None and not cfg.overwrite_output_dir:
        raise OutputDirError(f"{foreign} is a checkpoint of another run than the one in {out}: resuming it there "
                             f"would replace that run; pass --overwrite_output_dir to replace it, or choose a new "
                             f"--output_dir")
    if state == "run" and foreign is not None and out.resolve() in foreign.resolve().parents:
        raise OutputDirError(f"{foreign} lies inside {out}, which --overwrite_output_dir would clear; copy the "
                             f"checkpoint elsewhere first, or choose a new --output_dir")
    if state == "run" and not (resume is not None or cfg.overwrite_output_dir):
        raise OutputDirError(f"output_dir {out} already holds a run; pass --resume_from_checkpoint latest to "
                             f"continue it, --overwrite_output_dir to start over there, or choose another "
                             f"--output_dir")


def claim_output_dir(cfg: RunConfig, accelerator, resume: Optional[Resume]) -> Path:
    """After every check: a fresh run (or one resuming another run's checkpoint) removes what a previous run left
    there (``--overwrite_output_dir``); the lock file stays, it is the running command's."""
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        if (resume is None or resume.foreign) and folder_state(out) == "run":
            clear_except_lock(out)
            logger.warning("--overwrite_output_dir: removed the previous run in %s (checkpoints, logs, models, "
                           "stage-2 and evaluation folders)", out)
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return out


# Settings a resumed run may change freely: where it writes and reports, how often it saves, how it is launched,
# how it fails, and where it stops (``epochs``; the schedules keep ``schedule_epochs``). Every other stage-1 key
# changes what the remaining epochs compute.
FREE_ON_RESUME = {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "allow_changed_config",
                  "checkpointing_steps", "keep_last_checkpoints", "on_nonfinite_loss", "max_skipped_steps",
                  "num_workers", "log_every", "export_dataset", "bad_image_policy", "eval_batch_size", "channels_last",
                  "torch_compile", "per_device_train_batch_size", "epochs", "run_id", "schedule_epochs"}


def result_settings(cfg: RunConfig) -> dict:
    """The settings a checkpoint records and a resume compares (``schedule_epochs`` resolved)."""
    keys = [k for k in fields_of(STAGE1) if k not in FREE_ON_RESUME and FIELDS[k].metadata["group"] not in
            ("Tracking", "Hub")]
    return {**{k: getattr(cfg, k) for k in keys}, "schedule_epochs": cfg.schedule_epochs or cfg.epochs}


def check_resume_settings(cfg: RunConfig, meta: dict) -> List[dict]:
    """Compare the resuming run's settings with the checkpoint's (read-only): a change is refused unless
    ``--allow_changed_config``; returns the changes (key, old, new, from_epoch). Sets ``cfg.schedule_epochs`` to
    the run's, so that a longer ``--epochs`` extends the run without re-stretching its schedules."""
    recorded = meta.get("hparams")
    if recorded is None:  # a checkpoint written before settings were recorded: nothing to compare
        return []
    schedule = recorded["schedule_epochs"]
    cfg.schedule_epochs = schedule if schedule != cfg.epochs else None
    now = result_settings(cfg)
    changes = [{"key": k, "old": recorded[k], "new": now[k], "from_epoch": meta.get("epoch"),
                "from_step": meta.get("global_step")} for k in now
               if k in recorded and recorded[k] != now[k] and k not in meta]  # the signature is checked apart
    if meta.get("epochs") not in (None, cfg.epochs):
        logger.warning("--epochs %d (the run had %d): T and the lr follow the run's %d-epoch schedule%s "
                       "(docs/reliability.md)", cfg.epochs, meta["epochs"], schedule,
                       f" and hold their final values for epochs {schedule + 1}-{cfg.epochs}"
                       if cfg.epochs > schedule else f"; the run stops after epoch {cfg.epochs}")
        epochs_change = {"key": "epochs", "old": meta["epochs"], "new": cfg.epochs, "from_epoch": meta.get("epoch"),
                         "from_step": meta.get("global_step")}
    else:
        epochs_change = None
    if changes and not cfg.allow_changed_config:
        shown = ", ".join(f"{c['key']} {c['old']!r} -> {c['new']!r}" for c in changes)
        raise ConfigError(f"resuming with changed settings ({shown}), which would change what the remaining epochs "
                          f"compute: resume with the run's own values (its config.yaml), start a new --output_dir, "
                          f"or pass --allow_changed_config to apply them from epoch {meta.get('epoch')} on (recorded "
                          f"in run_info.json)")
    for c in changes:
        logger.warning("--allow_changed_config: %s changes from %r to %r at epoch %s (step %s); recorded in %s",
                       c["key"], c["old"], c["new"], c["from_epoch"], c["from_step"], RUN_INFO_FILE)
    return changes + ([epochs_change] if epochs_change else [])
