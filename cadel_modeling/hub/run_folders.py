"""Where the parts of a run live, seen from one of its models: the model folder, its stage-2 folder (if any) and the
stage-1 run folder; and the evaluations made of it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import yaml

from ..modeling.locate import find_model_dir
from ..run_layout import EVAL_PREFIX, RESULTS_FILE, run_dir_of, split_of_eval_dir, stage_dir_of
from ..utils.io import read_json


@dataclass
class RunFolders:
    """A standalone model folder (or a downloaded Hub repository) is all three at once."""

    model_dir: Path
    stage_dir: Optional[Path]
    run_dir: Path

    @classmethod
    def locate(cls, path) -> RunFolders:
        model_dir = find_model_dir(str(path))
        return cls(model_dir, stage_dir_of(model_dir), run_dir_of(model_dir))

    def find(self, name: str) -> Optional[Path]:
        """A run file, looked up in the model folder, the stage-2 folder, then the run folder."""
        for folder in (self.model_dir, self.stage_dir, self.run_dir):
            if folder is not None and (folder / name).is_file():
                return folder / name
        return None

    def evaluations(self, extra: Sequence = ()) -> Dict[str, Path]:
        """split -> folder holding its ``results.json``: evaluations of this model only (its own folder, its
        stage-2 folder, and ``extra``; later ones win)."""
        bases = [b for b in (self.stage_dir, self.model_dir) if b is not None]
        folders = [f for base in dict.fromkeys(bases) for f in sorted(base.glob(f"{EVAL_PREFIX}*"))]
        folders += [Path(f) for f in extra]
        found = {}
        for folder in folders:
            if (folder / RESULTS_FILE).is_file():
                split = read_json(folder / RESULTS_FILE).get("split") or split_of_eval_dir(folder)
                found[split] = folder
        return found


def load_file(path: Optional[Path]) -> dict:
    """A JSON or YAML file as a dict; {} when there is none."""
    if path is None:
        return {}
    if path.suffix == ".json":
        return read_json(path)
    return yaml.safe_load(path.read_text()) or {}
