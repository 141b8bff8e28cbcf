"""Stage 2's original method (the original's whole stage 2): the stage-1 model is kept as it is and run once over each
split; ``stages/stage2.py`` then picks tau from the configured grid on validation.

A stage-2 method is a module with ``split_logits``, ``tau_grid`` and ``report_lines`` (this one and ``crt.py``),
listed in ``stage2.METHODS``.
"""
from __future__ import annotations

from typing import List, Optional

from ..inference import predict_split, process_invariant_loader


def split_logits(cfg, accelerator, model, data, loader_spec):
    """The val/test exit logits of the model (one forward pass per split), the network to save, and no record."""
    loaders = {s: process_invariant_loader(data, s, loader_spec, accelerator.num_processes)
               for s in ("val", "test") if s in data.splits}
    model, *prepared = accelerator.prepare(model, *(dl for dl, _ in loaders.values()))
    logits = {s: predict_split(model, dl, accelerator, size, s)
              for (s, (_, size)), dl in zip(loaders.items(), prepared)}
    return logits, accelerator.unwrap_model(model), None


def tau_grid(cfg) -> List[float]:
    return [float(t) for t in cfg.tau_grid]


def report_lines(record: Optional[dict]) -> List[str]:
    return []
