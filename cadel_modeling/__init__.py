"""cadel: CADEL long-tailed classification on timm + accelerate + datasets + evaluate + transformers.

Importing the package is cheap: torch, timm and transformers load when a name below is first used, so the
command-line tools can parse their flags (and report a typo) at once. Taking a model class from here, or calling
``register_auto_classes()``, registers the "cadel" model type with transformers, after which
``AutoModelForImageClassification.from_pretrained`` and ``pipeline("image-classification")`` load CADEL models::

    import cadel_modeling
    from transformers import pipeline

    cadel_modeling.register_auto_classes()
    classifier = pipeline("image-classification", model="user/cadel-resnet50-imagenet-lt")
"""
import importlib

_EXPORTS = {
    "CadelConfig": "modeling",
    "CadelForImageClassification": "modeling",
    "register_auto_classes": "hub",
    "save_image_processor": "hub",
    "build_model_card": "hub",
    "push_to_hub": "hub",
    "find_model_dir": "hub",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    if _EXPORTS[name] == "modeling":
        importlib.import_module(".hub", __name__).register_auto_classes()
    return getattr(module, name)
