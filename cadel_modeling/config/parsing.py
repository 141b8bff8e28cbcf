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
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .presets import ConfigError, preset_listing, read_preset_chain, read_yaml_file
from .schema import ALIASES, FIELDS, GROUPS, STAGE1, RunConfig, fields_of

COMMAND_NAMES = {"stage1": "stage 1", "stage2": "stage 2", "evaluate": "evaluation"}
DEFAULT_PRESET = "fashion_mnist_lt"  # stage 1 without --config: the demo, not a ResNet-50 at 224 px for 200 epochs
# Keys that describe a dataset, not the recipe: a preset's values stay with the preset's own data.
DATASET_KEYS = ("num_classes", "n_max", "imb_factor", "imb_type", "val_per_class")
# Flags of the HF examples that cadel has no counterpart for, and what to do instead.
NOT_IN_CADEL = {
    "trust_remote_code": "cadel builds its models from timm names and runs no code from a model repository",
    "max_train_steps": "cadel trains whole epochs (schedule, validation and best-model choice are per epoch); use "
                       "--epochs",
    "num_warmup_steps": "cadel's warmup is counted in epochs; use --warmup_epochs with --scheduler warmup_cosine",
    "model_name_or_path": "the backbone is a timm model name (--backbone, with --pretrained for timm's weights); to "
                          "start from a cadel model use --init_from",
    "ignore_mismatched_sizes": "--init_from always keeps tensors of another shape (a new class count) fresh",
    "train_val_split": "a validation split comes from the data (val/ folder, validation split) or, with "
                       "--imb_factor, --val_per_class images per class",
    "do_train": "stage 1 trains and validates; evaluation is its own command",
    "do_eval": "stage 1 trains and validates; evaluation is its own command",
}
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
    "select_rule_confidence": (lambda v: 0 <= v <= 1, "a fraction between 0 and 1 (0.95: ahead in 95% of resamples)"),
    "select_rule_resamples": (lambda v: v >= 1, "at least 1 (1000 is plenty)"),
    "tau_grid": (lambda v: len(v) > 0 and all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0
                                              for t in v),
                 "a non-empty list of numbers, each 0 or more (tau scales the log prior: -1 would favour the head)"),
}


# HF-example values of a cadel choice ("cosine": their per-step cosine with warmup; "epoch": checkpoint per epoch,
# which cadel always does)
HF_VALUES = {"scheduler": {"cosine": "warmup_cosine"}, "checkpointing_steps": {"epoch": None}}
KIND_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text",
              "list": "a list such as [1, 2]", "dict": "a mapping such as {key: value}"}


def _kind(key: str) -> tuple:
    """(kind, optional) of a field from its annotation: kind is bool, int, float, str, list or dict."""
    ann = str(FIELDS[key].type)
    optional = ann.startswith("Optional[")
    return (ann[len("Optional["):-1] if optional else ann), optional


def expected_words(key: str) -> str:
    """What a value of ``key`` must be, in words ('a number, or null for none'), never a Python type."""
    kind, optional = _kind(key)
    return KIND_WORDS[kind] + (", or null for none" if optional else "")


def coerce(key: str, value: Any, where: str) -> Any:
    """Convert a parsed value to the field's type, with a message that says what was expected."""
    kind, optional = _kind(key)
    if isinstance(value, str) and value in HF_VALUES.get(key, {}):
        value = HF_VALUES[key][value]
    if optional and kind != "str" and isinstance(value, str) and value.lower() in ("none", "null"):
        value = None  # Python's spelling of null, as HF users type it
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
        raise ConfigError(f"{key} in {where} should be {expected_words(key)}, got {value!r}")
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


def build_parser(command: str, description: str, shown: Optional[dict] = None) -> argparse.ArgumentParser:
    """The flags of ``command`` in its groups, aliases hidden but accepted (as timm's train.py), with the defaults
    this run would use: ``shown`` (the preset's values) over the built-in ones."""
    shown = shown or {}
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter, allow_abbrev=False,
                                     usage="%(prog)s [--config PRESET|FILE] [--KEY VALUE ...]")
    parser.add_argument("-c", "--config", default=None, metavar="PRESET|FILE",
                        help="a preset (imagenet_lt, inat18, places_lt = the paper's CNN rows; *_vit = its ViT-B/16 "
                             "224 rows; --list_presets shows all) or a YAML file; flags override it; --help shows its "
                             "values" + (f" (default: the demo preset {DEFAULT_PRESET})" if command == STAGE1 else ""))
    parser.add_argument("--list_presets", action="store_true", help="list the presets with their paper numbers")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    groups = {}
    for name, fld in fields_of(command).items():
        group_name = fld.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(f"{group_name}: {GROUPS[group_name][0]}")
        group = groups[group_name]
        default = shown[name] if name in shown else \
            fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
        kind, _ = _kind(name)
        bare = {"nargs": "?", "const": "true"} if kind == "bool" else {}
        aliases = fld.metadata["aliases"]
        notes = ([] if default in (None, {}, "") else [f"default {default}"]) + [f"alias --{a}" for a in aliases]
        text = fld.metadata["help"] + (f" [{'; '.join(notes)}]" if notes else "")
        group.add_argument(f"--{name}", default=argparse.SUPPRESS, metavar=_metavar(name),
                           type=yaml.safe_load, help=text, **bare)
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
    if key in NOT_IN_CADEL:
        return ConfigError(f"--{key} has no counterpart in cadel: {NOT_IN_CADEL[key]}")
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


def _preset_argument(argv: Sequence[str]) -> Optional[str]:
    """The ``--config`` of ``argv``, read before the full parser is built (its ``--help`` shows the preset)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("-c", "--config", default=None)
    return pre.parse_known_args(argv)[0].config


def implied_dataset(cli: dict) -> dict:
    """``--dataset_name`` alone means ``--dataset hub`` and ``--train_dir`` means ``--dataset imagefolder``, as in the
    HF examples, where naming the data is enough."""
    if cli.get("validation_dir") and not cli.get("train_dir"):
        raise ConfigError("--validation_dir needs --train_dir (the training images' folder)")
    implied = "imagefolder" if cli.get("train_dir") else "hub" if cli.get("hub_dataset_id") else None
    if implied and cli.get("dataset", implied) != implied:
        flag = "--train_dir" if implied == "imagefolder" else "--dataset_name"
        raise ConfigError(f"{flag} reads {implied} data but --dataset is {cli['dataset']}; drop one of the two")
    return {"dataset": implied} if implied and "dataset" not in cli else {}


def data_source(values: dict) -> tuple:
    """What data a config reads: the dataset, and for the user's own data, where it is."""
    dataset = values.get("dataset", FIELDS["dataset"].default)
    where = {"imagefolder": ("data_dir", "train_dir"), "hub": ("hub_dataset_id", "hub_dataset_config")}
    return (dataset,) + tuple(values.get(k) for k in where.get(dataset, ()))


# Training settings a preset chose on its own validation split; the ones most likely not to transfer (issue 28: a
# preset's mixup 0.5 cost about 4 points on a user's own data), named when a preset is used on other data.
RECIPE_KEYS_TUNED_ON_ITS_DATA = ("mixup_alpha", "epochs", "lr")


def foreign_dataset_keys(recipe: dict, cli: dict) -> dict:
    """The preset's dataset-only keys (not repeated on the command line) when the command line points at other
    data: they describe the preset's dataset, not the user's, so they are left out."""
    if data_source(recipe) == data_source({**recipe, **cli}):
        return {}
    return {k: recipe[k] for k in DATASET_KEYS if k in recipe and k not in cli and recipe[k] != FIELDS[k].default}


def dropped_keys_note(cfg: RunConfig) -> Optional[str]:
    """The log line saying which preset keys were left out, or None."""
    if not cfg.dropped_preset_keys:
        return None
    shown = ", ".join(f"{k}={v}" for k, v in cfg.dropped_preset_keys.items())
    tuned = ", ".join(f"{k}={getattr(cfg, k)}" for k in RECIPE_KEYS_TUNED_ON_ITS_DATA)
    return (f"not applied to {cfg.dataset} data: the preset's settings of its own dataset ({shown}); pass them as "
            f"flags to apply them here. The recipe's {tuned} were chosen on the preset's own data and may not "
            f"transfer (mixup first, docs/presets.md): check them on this data with cadel-compare")


def parse_config(argv: Optional[Sequence[str]] = None, command: str = STAGE1, description: str = "",
                 base: Optional[dict] = None) -> RunConfig:
    """Resolve ``defaults < base (e.g. the model's run config) < --config preset < command line``; stage 1 without
    ``--config`` and base runs the demo preset."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = _preset_argument(argv) or (DEFAULT_PRESET if command == STAGE1 and base is None else None)
    recipe = dict(base or {})
    if preset:
        recipe.update(read_config_file(preset))
    parser = build_parser(command, description, shown=recipe)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise _unknown_flag_error(unknown[0], command)
    cli = vars(args)
    for name in ("config", "list_presets", "debug"):
        cli.pop(name)
    cli = {key: coerce(key, value, "the command line") for key, value in cli.items()}
    cli.update(implied_dataset(cli))
    dropped = foreign_dataset_keys(recipe, cli)
    values = {**{k: v for k, v in recipe.items() if k not in dropped}, **cli}
    if dropped:
        values["dropped_preset_keys"] = dropped
    for key in values:
        check_key(key, "the base config")
    return resolve(values)


def print_preset_listing() -> None:
    print("Presets (--config NAME):\n" + preset_listing())
