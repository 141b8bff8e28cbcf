"""The backbone of a cadel model as a timm model folder: ``config.json`` (architecture, the arguments that rebuild it,
and a ``pretrained_cfg`` whose input size, crop, interpolation, mean and std rebuild the model's own evaluation
transform) and ``model.safetensors``, which
``timm.create_model("local-dir:<folder>", pretrained=True)`` (or ``hf-hub:<id>`` once uploaded) loads. The exported
model has no classifier (``num_classes=0``) and mean pooling: it returns the features the last exit classifies."""
from __future__ import annotations

import json
import math
from pathlib import Path

import timm
import torch

from ..run_layout import (
    BEST_MODEL,
    CHECKPOINTS,
    CONFIG_FILE,
    MODEL_CONFIG_FILE,
    PROCESSOR_FILE,
    RUN_CONFIG_NAME,
    RUN_INFO_FILE,
)
from ..utils.errors import ModelError, OutputDirError

SOURCE_KEYS = ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes")
INTERPOLATIONS = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes of the image processor

# What marks a cadel run or model folder: an export there would replace its config.json or break the run.
CADEL_MARKERS = (CONFIG_FILE, RUN_INFO_FILE, CHECKPOINTS, BEST_MODEL, RUN_CONFIG_NAME)


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
    model_dir = find_model_dir(model_ref)  # once: for a Hub id it is a download
    model = load_model(model_dir)
    c = model.config
    args = {"num_classes": 0, "global_pool": "avg", **c.backbone_kwargs}
    if c.is_vit:
        args["img_size"] = c.image_size
    plain = timm.create_model(c.backbone, pretrained=False, **args)
    missing, unexpected = plain.load_state_dict(model.backbone.state_dict(), strict=False)
    if missing or unexpected:
        raise ModelError(f"the backbone of {model_ref} does not match timm's {c.backbone} (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    data_config = eval_data_config(model_dir, c.image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        save_for_hf(plain.eval(), str(out), model_args=args, safe_serialization=True, data_config=data_config)
    config = json.loads((out / MODEL_CONFIG_FILE).read_text())  # timm's Hub folder: the same name
    for key in SOURCE_KEYS:  # the timm architecture's own weights (tag, licence) are not these weights
        config["pretrained_cfg"].pop(key, None)
    (out / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return out


def eval_data_config(model_dir: Path, image_size: int) -> dict:
    """timm's ``pretrained_cfg`` data fields that rebuild the model's own evaluation transform (its saved image
    processor): resize the shortest edge then center-crop ('imagenet'), or resize to the square ('small', 'none')."""
    path = Path(model_dir) / PROCESSOR_FILE
    if not path.is_file():
        raise ModelError(f"{model_dir} has no {PROCESSOR_FILE} (cadel saves one with every model), so "
                                f"its evaluation transform is unknown; export a model folder written by cadel")
    processor = json.loads(path.read_text())
    config = {"input_size": (3, image_size, image_size), "mean": tuple(processor["image_mean"]),
              "std": tuple(processor["image_std"]), "interpolation": INTERPOLATIONS[processor["resample"]]}
    if not processor.get("do_center_crop"):
        return {**config, "crop_pct": 1.0, "crop_mode": "squash"}
    edge = processor["size"]["shortest_edge"]
    crop_pct = image_size / edge  # timm resizes to floor(size / crop_pct): nudge a rounding down back to edge
    if math.floor(image_size / crop_pct) != edge:
        crop_pct = image_size / (edge + 0.25)
    return {**config, "crop_pct": crop_pct, "crop_mode": "center"}
