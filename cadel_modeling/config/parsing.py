"""Command-line flags for the config keys: ``defaults < base (the model's own settings) < --config < flags``.

Every key of ``RunConfig`` that a command uses is a flag (``--lr 0.1``, ``--lr=0.1``, ``--tau-grid "[1, 2]"``),
parsed as YAML and checked against the field's type and choices; booleans also work bare (``--push_to_hub``), and the
Hugging Face examples' names are aliases (``--learning_rate``, ``--num_train_epochs``, ...). Unknown flags are errors
that name the closest flag, because a silently ignored typo costs a 200-epoch run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .presets import ConfigError, preset_listing, read_preset_chain, read_yaml_file
from .schema import ALIASES, FIELDS, GROUPS, STAGE1, RunConfig, fields_of

COMMAND_NAMES = {"stage1": "stage 1", "stage2": "stage 2", "evaluate": "evaluation"}
# Checks a value must pass beyond its type: (test, what it must be).
LIMITS = {
    "epochs": (lambda v: v >= 1, "at least 1"), "batch_size": (lambda v: v >= 1, "at least 1"),
    "eval_batch_size": (lambda v: v >= 1, "at least 1"), "grad_accum_steps": (lambda v: v >= 1, "at least 1"),
    "per_device_train_batch_size": (lambda v: v is None or v >= 1, "at least 1"),
    "crt_epochs": (lambda v: v >= 1, "at least 1"), "crt_batch_size": (lambda v: v is None or v >= 1, "at least 1"),
    "keep_last_checkpoints": (lambda v: v >= 1, "at least 1"), "max_skipped_steps": (lambda v: v >= 1, "at least 1"),
    "checkpointing_steps": (lambda v: v is None or v >= 1, "at least 1 (or null)"),
    "lr": (lambda v: v >= 0, "0 or more"), "num_workers": (lambda v: v >= 0, "0 or more"),
    "image_size": (lambda v: v >= 8, "at least 8 pixels"), "bins": (lambda v: v >= 1, "at least 1"),
    "imb_factor": (lambda v: v is None or v >= 1, "n_max/n_min, at least 1 (100 means 'IF 100')"),
    "n_max": (lambda v: v is None or v >= 1, "at least 1"), "val_per_class": (lambda v: v >= 0, "0 or more"),
    "mixup_alpha": (lambda v: v >= 0, "0 (off) or more"), "log_every": (lambda v: v >= 0, "0 or more"),
    "exit_weight_step": (lambda v: 0 <= v <= 1, "between 0 (off) and 1"),
    "tau_grid": (lambda v: len(v) > 0 and all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0
                                              for t in v),
                 "a non-empty list of numbers, each 0 or more (tau scales the log prior: -1 would favour the head)"),
}


def _kind(key: str) -> tuple:
    """(kind, optional) of a field from its annotation: kind is bool, int, float, str, list or dict."""
    ann = str(FIELDS[key].type)
    optional = ann.startswith("Optional[")
    return (ann[len("Optional["):-1] if optional else ann), optional


def coerce(key: str, value: Any, where: str) -> Any:
    """Convert a parsed value to the field's type, with a message that says what was expected."""
    kind, optional = _kind(key)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} in {where} cannot be null")
    if kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            value = value.lower() in ("true", "yes", "1")
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
        value = int(value) if ok else value
    elif kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "list":
        value = [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
        ok = isinstance(value, list)
    elif kind == "dict":
        ok = isinstance(value, dict)
    else:  # str
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
    if not ok:
        raise ConfigError(f"{key} in {where} should be {FIELDS[key].type}, got {value!r}")
    choices = FIELDS[key].metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"{key}={value!r} in {where} is not one of {list(choices)}")
    check = LIMITS.get(key)
    if check and not check[0](value):
        raise ConfigError(f"{key} in {where} must be {check[1]}, got {value!r}")
    return value


def closest_flag(word: str, names: Sequence[str]) -> str:
    """'--lr (alias --learning_rate)' style suggestion among ``names`` and their aliases."""
    candidates = list(names) + [a for a, n in ALIASES.items() if n in names]
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.0)  # the closest, however far
    if not match:
        return ""
    name = ALIASES.get(match[0], match[0])
    aliases = [a for a, n in ALIASES.items() if n == name]
    return f"'--{name}'" + (f" (alias --{aliases[0]})" if aliases else "")


def check_key(key: str, where: str) -> None:
    if key not in FIELDS:
        suggestion = closest_flag(key, list(FIELDS)).replace("'--", "'")
        raise ConfigError(f"unknown config key {key!r} in {where}; did you mean {suggestion}?")


def read_config_file(name_or_path: str) -> dict:
    """A preset or YAML file with its ``base:`` chain resolved, every key checked and coerced."""
    merged = {}
    for source, data in read_preset_chain(name_or_path):
        for key, value in data.items():
            check_key(key, source)
            merged[key] = coerce(key, value, source)
    return merged


def load_run_config(path: os.PathLike) -> dict:
    """Read a resolved ``config.yaml`` / ``run_config.yaml`` written by ``RunConfig.save``, checking its keys."""
    data = read_yaml_file(Path(path))
    for key, value in data.items():
        check_key(key, str(path))
        data[key] = coerce(key, value, str(path))
    return data


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the docstring's layout; wide enough that most flags take one line."""

    def __init__(self, prog):
        width = max(120, min(shutil.get_terminal_size().columns, 160))
        super().__init__(prog, width=width, max_help_position=32)


def _metavar(key: str) -> str:
    kind, _ = _kind(key)
    choices = FIELDS[key].metadata["choices"]
    return "{" + ",".join(map(str, choices)) + "}" if choices else kind.upper()


def build_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The flags of ``command`` in its groups, defaults shown, aliases hidden but accepted (as timm's train.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter, allow_abbrev=False,
                                     usage="%(prog)s [--config PRESET|FILE] [--KEY VALUE ...]")
    parser.add_argument("-c", "--config", default=None, metavar="PRESET|FILE",
                        help="a preset (imagenet_lt, inat18, places_lt = the paper's CNN rows; *_vit = its ViT-B/16 "
                             "224 rows; --list_presets shows all) or a YAML file; flags override it")
    parser.add_argument("--list_presets", action="store_true", help="list the presets with their paper numbers")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    groups = {}
    for name, fld in fields_of(command).items():
        group_name = fld.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(f"{group_name}: {GROUPS[group_name][0]}")
        group = groups[group_name]
        default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
        kind, _ = _kind(name)
        bare = {"nargs": "?", "const": "true"} if kind == "bool" else {}
        aliases = fld.metadata["aliases"]
        notes = ([] if default in (None, {}, "") else [f"default {default}"]) + [f"alias --{a}" for a in aliases]
        shown = fld.metadata["help"] + (f" [{'; '.join(notes)}]" if notes else "")
        group.add_argument(f"--{name}", default=argparse.SUPPRESS, metavar=_metavar(name),
                           type=yaml.safe_load, help=shown, **bare)
        hidden = [f"--{name.replace('_', '-')}"] if "_" in name else []
        hidden += [f"--{a}" for a in aliases] + [f"--{a.replace('_', '-')}" for a in aliases if "_" in a]
        for flag in hidden:
            group.add_argument(flag, dest=name, default=argparse.SUPPRESS, type=yaml.safe_load, help=argparse.SUPPRESS,
                               **bare)
    return parser


def _unknown_flag_error(bad: str, command: str) -> ConfigError:
    key = bad.lstrip("-").split("=")[0].replace("-", "_")
    key = ALIASES.get(key, key)
    if not bad.startswith("-"):
        return ConfigError(f"unexpected argument {bad!r}; options take the form --key value")
    if key in FIELDS:
        users = ", ".join(COMMAND_NAMES[c] for c in FIELDS[key].metadata["commands"])
        return ConfigError(f"--{key} is not a flag of {COMMAND_NAMES[command]} (it is used by {users}); "
                           + ("stage 2 and evaluation keep the settings the model was trained with"
                              if command != STAGE1 else "remove it"))
    return ConfigError(f"unknown option {bad!r}; did you mean {closest_flag(key, list(fields_of(command)))}?")


def resolve(values: dict) -> RunConfig:
    """Apply the switches that set other keys (HF per-device batch, --with_tracking) and build the config."""
    per_device = values.pop("per_device_train_batch_size", None)
    if per_device is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        values["batch_size"] = per_device * world * values.get("grad_accum_steps", 1)
    if values.get("with_tracking") and values.get("report_to", "none") == "none":
        values["report_to"] = "all"
    return RunConfig(**values)


def parse_config(argv: Optional[Sequence[str]] = None, command: str = STAGE1, description: str = "",
                 base: Optional[dict] = None) -> RunConfig:
    """Resolve ``defaults < base (e.g. the model's run config) < --config preset < command line``."""
    parser = build_parser(command, description)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise _unknown_flag_error(unknown[0], command)
    values = dict(base or {})
    cli = vars(args)
    preset = cli.pop("config")
    cli.pop("list_presets")
    cli.pop("debug")
    if preset:
        values.update(read_config_file(preset))
    for key, value in cli.items():
        values[key] = coerce(key, value, "the command line")
    for key in values:
        check_key(key, "the base config")
    return resolve(values)


def wants_preset_listing(argv: Sequence[str]) -> bool:
    return "--list_presets" in argv


def print_preset_listing() -> None:
    print("Presets (--config NAME):\n" + preset_listing())
