"""From a run to a model and back to disk: the model config of a run on its data, building the model (timm weights,
a checkpoint file, or another cadel model to start from), and saving a model folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..run_layout import REPLACED_SUFFIX, RUN_CONFIG_NAME, SAVING_SUFFIX
from ..utils.errors import ModelError
from ..utils.finite import require_finite
from ..utils.io import disk_space_guard
from .backbones import UnsupportedBackboneError
from .locate import find_model_dir
from .modeling_cadel import CadelConfig, CadelForImageClassification
from .pretrained import load_pretrained_checkpoint
from .processing import save_image_processor


def model_config_for(cfg, data) -> CadelConfig:
    """The model config of a run (``RunConfig``) on a dataset (``LongTailedData``): labels and counts come from the
    data, everything else from the run."""
    return CadelConfig(
        backbone=cfg.backbone, backbone_kwargs=cfg.backbone_kwargs, num_labels=data.num_classes,
        image_size=cfg.image_size, id2label=dict(enumerate(data.class_names)),
        label2id={n: i for i, n in enumerate(data.class_names)}, exit_stages=cfg.exit_stages,
        exit_blocks=cfg.exit_blocks, aux_head=cfg.aux_head, aux_width=cfg.aux_width, aux_groups=cfg.aux_groups,
        aux_padding=cfg.aux_padding, aux_depth=cfg.aux_depth, aux_norm=cfg.aux_norm, cosine_scale=cfg.cosine_scale,
        drop_path=cfg.drop_path, inference_rule=cfg.inference_rule, class_counts=data.class_counts,
        image_mean=list(data.mean), image_std=list(data.std))


def build_model(cfg, data) -> CadelForImageClassification:
    """The run's model: timm's weights by name (``pretrained``), then a checkpoint file (``pretrained_checkpoint``).
    Stage 1 then starts it from another cadel model if asked (``init_from_model``).

    A backbone with learning rate 0 (Places-LT ResNet-152) is frozen: SGD would leave it unchanged anyway, and
    skipping its backward saves most of the compute. Its BatchNorm statistics still update in train mode, as in
    the original.
    """
    config = model_config_for(cfg, data)
    try:
        model = CadelForImageClassification(config, pretrained_backbone=cfg.pretrained)
    except UnsupportedBackboneError:
        raise
    except ValueError as exc:  # the model's own checks of the settings (it ships as remote code: plain ValueError)
        raise ModelError(f"cannot build the {cfg.backbone} cascade with these settings: {exc}") from exc
    except OSError as exc:
        if not cfg.pretrained:
            raise
        raise ModelError(f"could not fetch timm's pretrained weights for {cfg.backbone!r} from the Hugging Face Hub "
                         f"({type(exc).__name__}); go online or pre-download them into the cache, or pass --pretrained "
                         f"false (optionally with --pretrained_checkpoint FILE)") from exc
    if cfg.pretrained_checkpoint:
        load_pretrained_checkpoint(model, cfg.pretrained_checkpoint)
    if cfg.backbone_lr == 0:
        model.backbone.requires_grad_(False)
    return model


def init_from_model(model: CadelForImageClassification, ref: str) -> dict:
    """Start ``model`` from the cadel model at ``ref`` (folder, run folder or Hub id): same backbone required; its
    backbone, and its heads where the shapes match. Returns what was loaded, for the run's log and run_info.json."""
    source = find_model_dir(ref)
    source_config = CadelConfig.from_pretrained(str(source))
    if source_config.backbone.split(".")[0] != model.config.backbone.split(".")[0]:
        raise ModelError(f"--init_from {ref} is a {source_config.backbone} cascade but this run builds "
                         f"{model.config.backbone}; pass --backbone {source_config.backbone} (and its exit settings)")
    report = load_pretrained_checkpoint(model, source)
    loaded = set(report.loaded)
    fresh = [name for name in model.state_dict() if name not in loaded]
    return {"source": ref, "tensors_loaded": len(report.loaded), "tensors_fresh": len(fresh), "fresh": fresh,
            "summary": f"initialised from {ref}: {len(report.loaded)} tensors loaded, {len(fresh)} kept fresh "
                       f"(new class count or head)"}


def save_model(net: CadelForImageClassification, path, run_config, augmentation: str) -> None:
    """Weights + model config (tau, counts, labels) + image processor + the run config that made them, in one
    folder, written under a temporary name and renamed, and only when every tensor is finite."""
    require_finite(net.state_dict().items(), f"the model to {path}")
    path = Path(path)
    tmp = path.with_name(path.name + SAVING_SUFFIX)
    if tmp.exists():
        shutil.rmtree(tmp)
    needed = sum(v.nelement() * v.element_size() for v in net.state_dict().values())
    with disk_space_guard(path.parent, needed, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
        net.save_pretrained(str(tmp))
        save_image_processor(tmp, net.config, augmentation)
        run_config.save(tmp / RUN_CONFIG_NAME)
    if path.exists():
        old = path.with_name(path.name + REPLACED_SUFFIX)
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


def load_model(model_dir) -> CadelForImageClassification:
    """A saved cadel model in eval mode, its weights checked (safetensors: nothing executable is read). A folder
    whose weights are missing or truncated, or whose config was edited out of shape (an ``id2label`` cut to fewer
    classes), is a ``ModelError`` naming the folder."""
    from safetensors import SafetensorError
    model_dir = Path(model_dir)
    if not any(model_dir.glob("*.safetensors")):
        raise ModelError(f"{model_dir} has no model.safetensors: the model folder is incomplete; write it again (rerun "
                         f"the stage that made it) or point at another model")
    try:
        with torch.device("cpu"):
            return CadelForImageClassification.from_pretrained(str(model_dir)).eval()
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"cannot load the model in {model_dir}: {type(exc).__name__}: {reason}. Its files are "
                         f"truncated or edited: write it again (rerun the stage that made it) or point at another "
                         f"model") from exc
