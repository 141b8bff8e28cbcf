"""The rule that nothing non-finite is ever saved: every save first checks every floating tensor it writes."""
from __future__ import annotations

from typing import Iterable, List, Tuple

import torch


class NonFiniteTensorError(ValueError):
    """A model, optimizer or checkpoint about to be saved holds NaN or inf values (the run diverged)."""

    exit_code = 3


def nonfinite_tensors(named: Iterable[Tuple[str, torch.Tensor]]) -> List[str]:
    """Names of the floating tensors that hold a NaN or inf (one device sync per tensor; saves are rare)."""
    return [name for name, t in named if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]


def require_finite(named: Iterable[Tuple[str, torch.Tensor]], what: str) -> None:
    bad = nonfinite_tensors(named)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteTensorError(f"refusing to save {what}: {len(bad)} tensors hold NaN/inf ({shown})")
