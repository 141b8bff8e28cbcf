"""Named presets (``cadel_modeling/config/presets/*.yaml``) and YAML config files, with ``base:`` inheritance.

A YAML problem is reported with its file, line and column; an unknown preset with the closest name and the list.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Dict, List

import yaml

from ..utils.errors import ConfigError
from .paper import paper_model_name, paper_result

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> List[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml_file(path: Path) -> dict:
    """A YAML mapping; a syntax error names the file, line and column."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys (key: value lines), not a {type(data).__name__}")
    return data


def preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(str(name_or_path), preset_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ConfigError(f"no preset or YAML file named {name_or_path!r}{hint} Presets:\n{preset_listing()}")
    return path


def read_preset_chain(name_or_path: str, seen: tuple = ()) -> List[tuple]:
    """[(source, mapping), ...] from the deepest ``base:`` to ``name_or_path`` itself."""
    path = preset_path(name_or_path)
    if str(path) in seen:
        raise ConfigError(f"preset inheritance loop through {path}")
    data = read_yaml_file(path)
    base = data.pop("base", None)
    chain = read_preset_chain(str(base), seen + (str(path),)) if base else []
    return chain + [(str(path), data)]


def preset_summary(name: str) -> Dict[str, object]:
    """Dataset, backbone, resolution, what it resolves to and the paper's top-1 for a preset."""
    merged: dict = {}
    chain = read_preset_chain(name)
    for _, data in chain:
        merged.update(data)
    target = Path(chain[-2][0]).stem if len(chain) > 1 and set(chain[-1][1]) <= {"output_dir"} else None
    dataset, backbone, size = merged.get("dataset", "?"), merged.get("backbone", "?"), merged.get("image_size", 224)
    paper = paper_result(dataset, backbone, size)
    return {"name": name, "dataset": dataset, "backbone": backbone, "image_size": size, "alias_of": target,
            "paper_model": paper_model_name(backbone, size), "paper_top1": paper["accuracy"] if paper else None}


def preset_listing() -> str:
    """One line per preset: what it trains and the paper's number (the dataset-level names point to a row)."""
    lines = []
    for name in preset_names():
        s = preset_summary(name)
        what = f"{s['dataset']}, {s['backbone']} at {s['image_size']} px"
        paper = f"paper {s['paper_top1']:.1f}% top-1 ({s['paper_model']})" if s["paper_top1"] else "no paper number"
        alias = f" = {s['alias_of']}" if s["alias_of"] else ""
        lines.append(f"  {name + alias:<44} {what:<50} {paper}")
    return "\n".join(lines)
