"""The backbone of a cadel model as a timm model folder: ``config.json`` (architecture, the arguments that rebuild it,
and a ``pretrained_cfg`` with the data's input size, mean and std) and ``model.safetensors``, which
``timm.create_model("local-dir:<folder>", pretrained=True)`` (or ``hf-hub:<id>`` once uploaded) loads. The exported
model has no classifier (``num_classes=0``) and mean pooling: it returns the features the last exit classifies."""
from __future__ import annotations

from pathlib import Path

import timm
import torch

from ..modeling.locate import RUN_CONFIG_NAME
from ..utils.errors import ModelError, OutputDirError

# What marks a cadel run or model folder: an export there would replace its config.json or break the run.
CADEL_MARKERS = ("config.yaml", "run_info.json", "checkpoints", "best_model", RUN_CONFIG_NAME)


def check_export_target(out_dir, overwrite: bool) -> None:
    """Refuse a cadel run or model folder always, and any other non-empty folder unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out} is a file; choose a folder for the timm model")
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = next((m for m in CADEL_MARKERS if (out / m).exists()), None)
    if marker is not None:
        raise OutputDirError(f"{out} is a cadel run or model folder (it holds {marker}); exporting there would "
                             f"overwrite its files, --overwrite_output_dir or not: choose a new folder")
    if not overwrite:
        raise OutputDirError(f"{out} is not empty; choose a new folder, or pass --overwrite_output_dir to replace "
                             f"its config.json and model.safetensors")


def export_timm_backbone(model_ref: str, out_dir, overwrite: bool = False) -> Path:
    """Write the backbone of the cadel model at ``model_ref`` (folder, run folder or Hub id) to ``out_dir`` (a new
    or empty folder; another non-empty folder only with ``overwrite``; never a cadel run or model folder)."""
    from timm.models._hub import save_for_hf

    from ..modeling.factory import load_model
    from ..modeling.locate import find_model_dir

    check_export_target(out_dir, overwrite)
    model = load_model(find_model_dir(model_ref))
    c = model.config
    args = {"num_classes": 0, "global_pool": "avg", **c.backbone_kwargs}
    if c.is_vit:
        args["img_size"] = c.image_size
    plain = timm.create_model(c.backbone, pretrained=False, **args)
    missing, unexpected = plain.load_state_dict(model.backbone.state_dict(), strict=False)
    if missing or unexpected:
        raise ModelError(f"the backbone of {model_ref} does not match timm's {c.backbone} (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    data_config = {"input_size": (3, c.image_size, c.image_size), "mean": tuple(c.image_mean),
                   "std": tuple(c.image_std), "crop_pct": 224 / 256}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        save_for_hf(plain.eval(), str(out), model_args=args, safe_serialization=True, data_config=data_config)
    return out
