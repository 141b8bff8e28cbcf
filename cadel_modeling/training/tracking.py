"""Experiment tracking through accelerate's trackers (``--report_to tensorboard,wandb,...``, ``--with_tracking``).

The names are accelerate's ``log_with`` values. A tracker that is asked for by name but not installed is an error
that names the package to install (accelerate itself would only warn and log nothing). File-based trackers write
under ``--tracking_dir`` (default ``<output folder>/tracking``). The jsonl log is kept whatever is chosen.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

from ..utils.errors import ConfigError
from ..utils.secrets import without_secrets

logger = logging.getLogger("cadel")

TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
EXTRAS = {"tensorboard": "cadel[tensorboard]", "wandb": "cadel[wandb]", "mlflow": "cadel[mlflow]"}


def installed(name: str) -> bool:
    import accelerate.utils
    return bool(getattr(accelerate.utils, f"is_{name}_available")())


def resolve_trackers(report_to: str) -> List[str]:
    """The tracker names for ``report_to``: 'none', 'all' (every installed one) or a comma-separated list."""
    if report_to in ("none", ""):
        return []
    if report_to == "all":
        found = [name for name in TRACKERS if installed(name)]
        if not found:
            logger.warning("--report_to all: no tracker package is installed (pip install 'cadel[tensorboard]'); "
                           "only the jsonl log is written")
        return found
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"--report_to {','.join(unknown)}: not a tracker; choose from none, all, "
                          f"{', '.join(TRACKERS)} (comma-separated)")
    missing = [n for n in names if not installed(n)]
    if missing:
        how = " ".join(f"'{EXTRAS.get(n, n)}'" for n in missing)
        raise ConfigError(f"--report_to {','.join(missing)}: not installed; pip install {how}")
    return names


def tracking_kwargs(report_to: str, tracking_dir: Optional[str], default_dir: Path) -> dict:
    """``Accelerator`` keyword arguments for the chosen trackers (checked before anything is written)."""
    trackers = resolve_trackers(report_to)
    if tracking_dir:  # a folder the trackers can create: its first existing ancestor is a folder
        existing = next(p for p in [Path(tracking_dir), *Path(tracking_dir).parents] if p.exists() or p == Path("."))
        if existing.exists() and not existing.is_dir():
            raise ConfigError(f"--tracking_dir {tracking_dir}: {existing} is a file, not a folder; choose another "
                              f"--tracking_dir")
    if not trackers:
        return {}
    return {"log_with": trackers, "project_dir": str(tracking_dir or default_dir)}


def scalar_config(config: dict) -> Dict[str, object]:
    """A config as trackers take it (tensorboard's hparams accept numbers, strings, bools and None only), without
    its secrets: trackers upload what they are given (wandb, mlflow)."""
    return {k: v if v is None or isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in without_secrets(config).items()}


def start(accelerator, run_name: str, config: dict) -> None:
    if accelerator.log_with:
        accelerator.init_trackers(run_name, config=scalar_config(config))
