"""Where a model is: a model folder, the newest model of a run folder (stage 2 before stage 1), or a Hub model id
(from the local cache, or downloaded into it)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..run_layout import (
    BEST_MODEL,
    ENSEMBLE_FILE,
    MODEL_CONFIG_FILE,
    RUN_CONFIG_NAME,
    STAGE2_MODEL,
    STAGE2_PREFIX,
    holds_model,
)
from ..utils.errors import MissingInputError


def is_hub_id(ref: str) -> bool:
    return not Path(ref).exists() and not ref.startswith((".", "/", "~")) and ref.count("/") == 1


def find_model_dir(ref: str) -> Path:
    """A model folder (``config.json`` + weights) for ``ref``; a clear error when there is none."""
    path = Path(ref)
    if path.is_dir():
        if holds_model(path):
            return path
        stage2 = sorted((d for d in path.glob(f"{STAGE2_PREFIX}*/{STAGE2_MODEL}") if holds_model(d)),
                        key=lambda d: (d / MODEL_CONFIG_FILE).stat().st_mtime)   # the newest stage 2
        if stage2:
            return stage2[-1]
        if holds_model(path / BEST_MODEL):
            return path / BEST_MODEL
        raise MissingInputError(f"{path} holds no model ({MODEL_CONFIG_FILE}) nor a run with {BEST_MODEL}/ or "
                                f"{STAGE2_PREFIX}*/{STAGE2_MODEL}/")
    if not is_hub_id(ref):
        raise MissingInputError(f"no model folder at {ref}: pass a folder with {MODEL_CONFIG_FILE}, a run folder, "
                                f"or a Hub model id such as user/cadel-resnet50-imagenet-lt")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    try:
        return Path(snapshot_download(ref))
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OSError) as exc:
        raise MissingInputError(f"{ref} is not a folder here and could not be fetched as a Hub model id "
                                f"(offline runs need it in the local cache): {type(exc).__name__}") from exc


def run_config_path(model_dir) -> Path:
    """The run config saved with a model; an error naming the folder when it is missing."""
    path = Path(model_dir) / RUN_CONFIG_NAME
    if not path.is_file():
        raise MissingInputError(f"{model_dir} has no {RUN_CONFIG_NAME}: it was not written by cadel, so the settings "
                                f"it was trained with are unknown; pass --dataset/--data_dir/... explicitly")
    return path


def load_ensemble(model_dir) -> Optional[dict]:
    """The learned exit weights saved by stage 2 in a model folder, or None."""
    import json
    path = Path(model_dir) / ENSEMBLE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
