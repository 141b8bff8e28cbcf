"""cadel: CADEL long-tailed classification on timm + accelerate + datasets + evaluate + transformers.

The commands (``cadel-train-stage1``, ``cadel-train-stage2``, ``cadel-evaluate``, ``cadel-push-to-hub``,
``cadel-export-timm``, or ``accelerate launch -m cadel_modeling.train_stage1`` ...) are the main interface. From
Python, the public names are below. Importing the package is cheap: torch, timm and transformers load when a name is
first used. Taking a model class from here registers the "cadel" model type with transformers, so
``AutoModelForImageClassification.from_pretrained`` and ``pipeline("image-classification")`` load CADEL models
without ``trust_remote_code`` (elsewhere the remote code saved with every model serves)::

    import cadel_modeling
    from transformers import pipeline

    cadel_modeling.register_auto_classes()
    classifier = pipeline("image-classification", model="user/cadel-resnet50-imagenet-lt")
"""
import importlib

__version__ = "0.2.0"
_EXPORTS = {
    "CadelConfig": "modeling.modeling_cadel",
    "CadelForImageClassification": "modeling.modeling_cadel",
    "register_auto_classes": "modeling.auto_classes",
    "load_model": "modeling.factory",
    "RunConfig": "config",
    "parse_config": "config",
    "build_datasets": "data",
    "push_to_hub": "hub.publish",
    "export_timm_backbone": "hub.timm_export",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    if _EXPORTS[name].startswith("modeling"):
        importlib.import_module(".modeling.auto_classes", __name__).register_auto_classes()
    return getattr(module, name)
