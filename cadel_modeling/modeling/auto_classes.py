"""Teach transformers' Auto classes the "cadel" model type, so that where cadel is installed a model folder or Hub id
loads without ``trust_remote_code`` (elsewhere the remote code saved with the model serves)."""
from __future__ import annotations


def register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModelForImageClassification

    from .modeling_cadel import CadelConfig, CadelForImageClassification
    AutoConfig.register(CadelConfig.model_type, CadelConfig, exist_ok=True)
    AutoModelForImageClassification.register(CadelConfig, CadelForImageClassification, exist_ok=True)
