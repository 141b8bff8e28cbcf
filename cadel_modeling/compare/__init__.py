"""``cadel-compare`` / ``python -m cadel_modeling.compare``: CADEL against long-tail baselines on any dataset, over
seeds (``cli``), from the recipes (``recipes``), the runs (``runs``) and the numbers (``tables``)."""
from .cli import main

__all__ = ["main"]
