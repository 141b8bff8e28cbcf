"""Resumable checkpoints: what a resume needs, in data formats only, written atomically, checked before use.

A checkpoint folder ``checkpoints/step_XXXXXXXX/`` holds

- ``model.safetensors``: the weights and buffers (BatchNorm statistics included);
- ``optimizer.pt``: the optimizer's state dict, read back with ``torch.load(weights_only=True)`` (tensors, numbers,
  strings and lists only: a crafted file cannot run code, it fails to load);
- ``training_state.json``: loop position, best metric, counters, the mixed-precision scaler;
- ``rng_state_<process>.json``: the random generators of each process (numbers only);
- ``cadel_checkpoint.json``: what the checkpoint must agree on with a run that resumes it (backbone, data, classes,
  heads, input size) and the id of the run that wrote it; written last, so its presence marks a complete checkpoint.

Nothing else is accepted: a folder with any other file (a ``.pkl`` or ``.bin`` pickle, say) is refused before
anything is read. Every save first checks that all floating tensors are finite.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..run_layout import (
    CHECKPOINT_FILES,
    CHECKPOINT_META,
    CHECKPOINT_MODEL_FILE,
    CHECKPOINT_OPTIMIZER_FILE,
    CHECKPOINT_PREFIX,
    CHECKPOINT_RNG_PATTERN,
    CHECKPOINT_STATE_FILE,
    CHECKPOINTS,
    checkpoint_name,
)
from ..utils.errors import UserError
from ..utils.finite import require_finite
from ..utils.io import disk_space_guard, read_json, write_json

logger = logging.getLogger("cadel")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be resumed: missing, corrupt, unsafe, or made by another model or run."""


@dataclass
class TrainState:
    """Loop position and best-so-far, saved with every checkpoint."""

    epoch: int = 1                 # 1-indexed epoch in progress (or next to start)
    step_in_epoch: int = 0         # optimizer steps already done in ``epoch``
    global_step: int = 0
    best_metric: float = -1.0
    best_epoch: int = 0
    skipped_steps: int = 0         # steps dropped for a non-finite loss, over the whole run
    consecutive_skipped: int = 0   # the current streak; max_skipped_steps of them stop the run
    epoch_loss_sum: float = 0.0    # running loss of the epoch in progress, so a resumed epoch logs the same mean
    epoch_loss_count: int = 0
    epoch_images: int = 0          # images this process drew in the epoch in progress (micro-batches included)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)


def checkpoint_root(output_dir) -> Path:
    return Path(output_dir) / CHECKPOINTS


def signature_of(cfg, model_config) -> dict:
    """What a checkpoint must agree on with the run that resumes it."""
    return {"backbone": cfg.backbone, "backbone_kwargs": cfg.backbone_kwargs, "dataset": cfg.dataset,
            "num_labels": model_config.num_labels, "class_counts": model_config.class_counts,
            "class_names": [model_config.id2label[i] for i in range(model_config.num_labels)],
            "exit_stages": cfg.exit_stages, "exit_blocks": cfg.exit_blocks, "aux_head": cfg.aux_head,
            "aux_width": cfg.aux_width, "aux_padding": cfg.aux_padding, "aux_depth": cfg.aux_depth,
            "aux_norm": cfg.aux_norm, "cosine_scale": cfg.cosine_scale, "image_size": cfg.image_size,
            "augmentation": cfg.augmentation}


def _shown(key, value):
    if key in ("class_counts", "class_names") and isinstance(value, list):
        return f"{len(value)} classes" + (f", {sum(value)} images" if key == "class_counts" else "")
    return value


def check_signature(path: Path, found: dict, expected: dict) -> None:
    """Refuse to resume ``path`` (whose metadata is ``found``) when it was made with another ``expected`` value."""
    for key, value in expected.items():
        if key in found and found[key] != value:
            raise CheckpointError(
                f"checkpoint {path} was made with {key}={_shown(key, found[key])} but this run has "
                f"{key}={_shown(key, value)}; resume with the run's own settings (its config.yaml) or start a new "
                f"--output_dir")


def read_meta(path: Path) -> dict:
    try:
        return read_json(Path(path) / CHECKPOINT_META)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} is not a complete cadel checkpoint ({CHECKPOINT_META} missing)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt ({CHECKPOINT_META} is not valid JSON)") from exc


def expected_files(num_processes: int) -> set:
    return set(CHECKPOINT_FILES) | {CHECKPOINT_RNG_PATTERN.format(i) for i in range(num_processes)}


def verify(path: Path) -> dict:
    """The checkpoint's metadata after checking that it holds exactly the expected data files, all readable."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint folder at {path}")
    meta = read_meta(path)
    allowed = expected_files(meta.get("num_processes", 1))
    present = {p.name for p in path.iterdir()}
    unexpected = sorted(present - allowed)
    if unexpected:
        raise CheckpointError(f"checkpoint {path} holds unexpected files {unexpected}; cadel checkpoints hold only "
                              f"{sorted(allowed)} (data formats; a pickle could run code when loaded). Remove them or "
                              f"resume from another checkpoint")
    missing = sorted(allowed - present)
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: {missing} missing")
    try:
        from safetensors import safe_open
        with safe_open(str(path / CHECKPOINT_MODEL_FILE), framework="pt") as fh:
            fh.keys()
        read_json(path / CHECKPOINT_STATE_FILE)
    except Exception as exc:  # noqa: BLE001 - any unreadable file makes the checkpoint unusable
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(exc).__name__}: {exc})") from exc
    return meta


def list_checkpoints(output_dir) -> List[Path]:
    return sorted(p for p in checkpoint_root(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())


def latest_valid(output_dir, run_id: Optional[str]) -> Optional[Tuple[Path, dict]]:
    """The newest checkpoint of ``run_id`` that passes ``verify``, with its metadata; older ones stand in for corrupt
    ones (logged)."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            meta = verify(path)
        except CheckpointError as exc:
            logger.warning("skipping %s: %s", path.name, exc)
            continue
        if run_id is not None and meta.get("run_id") != run_id:
            logger.warning("skipping %s: it belongs to run %s, not to this folder's run %s", path.name,
                           meta.get("run_id"), run_id)
            continue
        return path, meta
    return None


def _rng_state() -> dict:
    state = {"python": _jsonable(random.getstate()), "torch": torch.get_rng_state().tolist(),
             "numpy": _jsonable(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(accelerator, model, optimizer, state: TrainState, output_dir, keep_last: int, meta: dict,
                    scaler=None) -> Path:
    """Write a checkpoint into a temporary folder, check it, and rename it into place (a crash never leaves a half
    checkpoint that ``latest`` would pick); older checkpoints beyond ``keep_last`` are removed. Refuses (and
    writes nothing) when any weight, buffer or optimizer tensor is not finite."""
    from safetensors.torch import save_file
    root = checkpoint_root(output_dir)
    name = checkpoint_name(state.global_step)
    final, tmp = root / name, root / f".tmp_{name}"
    net = accelerator.unwrap_model(model)
    weights = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    require_finite(weights.items(), "a checkpoint (model)")
    optimizer_state = optimizer.state_dict()
    require_finite(((f"{i}.{k}", v) for i, s in optimizer_state["state"].items() for k, v in s.items()),
                   "a checkpoint (optimizer)")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    needed = sum(v.nelement() * v.element_size() for v in weights.values()) + sum(
        v.nelement() * v.element_size() for s in optimizer_state["state"].values() for v in s.values()
        if torch.is_tensor(v))
    with disk_space_guard(root, needed, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
        write_json(tmp / CHECKPOINT_RNG_PATTERN.format(accelerator.process_index), _rng_state())
        if accelerator.is_main_process:
            save_file({k: v.cpu() for k, v in weights.items()}, str(tmp / CHECKPOINT_MODEL_FILE))
            torch.save(optimizer_state, tmp / CHECKPOINT_OPTIMIZER_FILE)
            training = {"state": state.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None}
            write_json(tmp / CHECKPOINT_STATE_FILE, training)
            write_json(tmp / CHECKPOINT_META, {**meta, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                                    "global_step": state.global_step, "num_processes": accelerator.num_processes})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, accelerator, model, optimizer, state: TrainState, scaler=None) -> None:
    """Restore model, optimizer, training state and this process's random generators from a verified checkpoint."""
    from safetensors.torch import load_file
    meta = verify(path)
    net = accelerator.unwrap_model(model)
    weights = load_file(str(path / CHECKPOINT_MODEL_FILE), device="cpu")
    net.load_state_dict(weights, strict=True)
    try:
        optimizer_state = torch.load(path / CHECKPOINT_OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refuses anything but data: say so
        raise CheckpointError(f"checkpoint {path}: {CHECKPOINT_OPTIMIZER_FILE} is not a plain optimizer state dict "
                              f"({type(exc).__name__}); it was refused without running it") from exc
    optimizer.load_state_dict(optimizer_state)
    training = read_json(path / CHECKPOINT_STATE_FILE)
    state.load_state_dict(training["state"])
    if scaler is not None and training.get("scaler"):
        scaler.load_state_dict(training["scaler"])
    rng = path / CHECKPOINT_RNG_PATTERN.format(accelerator.process_index)
    if meta.get("num_processes", 1) == accelerator.num_processes and rng.exists():
        _set_rng_state(read_json(rng))
