"""The cascade as a transformers model (``modeling_cadel``, ``heads``, ``backbones``: also saved as remote code with
every model), its costs, and the glue from a run to a model folder and back."""
from .backbones import UnsupportedBackboneError, backbone_family
from .modeling_cadel import CadelConfig, CadelForImageClassification, CadelOutput, predicted_scores

__all__ = ["CadelConfig", "CadelForImageClassification", "CadelOutput", "predicted_scores", "backbone_family",
           "UnsupportedBackboneError"]
