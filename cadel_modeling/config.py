"""Experiment configuration: named presets, YAML files and command-line overrides.

One flat schema (``RunConfig``) covers both stages and evaluation, so a preset describes a whole experiment and
every key can be overridden from the command line (``--lr 0.1`` or ``--lr=0.1``; hyphens and underscores are
interchangeable). Values on the command line are parsed as YAML (``--tau_grid "[1.0, 1.5]"``, ``--pretrained true``).
A preset may start from another one with ``base: <preset>``. Unknown keys are errors that name the closest key,
because a silently ignored typo costs a 200-epoch run.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem the user has to fix (unknown key, wrong type, missing preset)."""


def _f(default, group: str, help: str, choices: Optional[Sequence] = None):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"group": group, "help": help, "choices": choices})
    return field(default=default, metadata={"group": group, "help": help, "choices": choices})


@dataclass
class RunConfig:
    # ---------------------------------------------------------------- run
    output_dir: str = _f("runs/fashion_mnist_lt", "Run", "where checkpoints, logs, configs and results go")
    seed: int = _f(0, "Run", "seed for data order, augmentation, mixup and initialisation")
    overwrite_output_dir: bool = _f(False, "Run", "allow writing into an existing, non-empty output_dir")
    resume_from_checkpoint: Optional[str] = _f(None, "Run", "'latest' or a checkpoint folder to resume stage 1 from")
    checkpointing_steps: Optional[int] = _f(None, "Run", "also save a resumable checkpoint every N optimizer steps (always once per epoch)")
    keep_last_checkpoints: int = _f(2, "Run", "how many resumable checkpoints to keep")
    on_nonfinite_loss: str = _f("skip", "Run", "what to do with a NaN/inf loss: skip the step or stop the run", ["skip", "stop"])
    num_workers: int = _f(2, "Run", "DataLoader worker processes per process")
    log_every: int = _f(50, "Run", "log training loss every N optimizer steps")
    push_to_hub: bool = _f(False, "Run", "upload the model, configs and results to the Hugging Face Hub when done")
    hub_model_id: Optional[str] = _f(None, "Run", "Hub repository id (default: the output_dir's name)")
    hub_private: bool = _f(False, "Run", "create the Hub repository as private")
    # ---------------------------------------------------------------- data
    dataset: str = _f("fashion_mnist_lt", "Dataset", "dataset builder name (see cadel_modeling.data.DATASET_BUILDERS)")
    data_dir: Optional[str] = _f(None, "Dataset", "local data root (split lists / images / idx files); null = default location or the Hub")
    image_root: Optional[str] = _f(None, "Dataset", "image folder of split-list datasets (null = data_dir)")
    hub_dataset_id: Optional[str] = _f(None, "Dataset", "a Hub dataset id (or local dataset folder) for the 'hub' builder")
    image_column: str = _f("image", "Dataset", "image column name for Hub / folder datasets")
    label_column: str = _f("label", "Dataset", "label column name for Hub / folder datasets")
    num_classes: Optional[int] = _f(None, "Dataset", "expected number of classes; checked against the data when set")
    imb_factor: float = _f(100.0, "Dataset", "imbalance factor n_max/n_min of the synthetic long-tailed profile")
    imb_type: str = _f("exp", "Dataset", "long-tailed profile of synthetic LT datasets", ["exp", "step"])
    n_max: Optional[int] = _f(None, "Dataset", "images of the largest class in a synthetic LT split (null = dataset default)")
    val_per_class: int = _f(20, "Dataset", "images per class in a validation split carved from unused training images")
    image_size: int = _f(224, "Dataset", "training / evaluation crop size")
    augmentation: str = _f("imagenet", "Dataset", "train augmentation recipe", ["imagenet", "small", "none"])
    color_jitter: float = _f(0.4, "Dataset", "ColorJitter strength for the 'imagenet' recipe (0 = off; iNat18 uses 0)")
    bad_image_policy: str = _f("fail", "Dataset", "an unreadable image: fail with a report, or skip and count it", ["fail", "skip"])
    streaming: bool = _f(False, "Dataset", "stream the training split as an IterableDataset")
    shuffle_buffer: int = _f(10000, "Dataset", "shuffle buffer of a streamed training split")
    sampler: str = _f("instance", "Dataset", "training sampler", ["instance", "class_balanced", "sqrt"])
    # ---------------------------------------------------------------- model
    backbone: str = _f("resnet50", "Model", "timm model name")
    pretrained: bool = _f(False, "Model", "load timm's pretrained weights for the backbone (needs the Hub)")
    pretrained_checkpoint: Optional[str] = _f(None, "Model", "a .pth/.safetensors checkpoint or a saved CADEL model folder (MAE/LiVT {'model': ...} works)")
    exit_stages: list = _f([-3, -2], "Model", "CNN: feature stages (timm feature indices, negatives count from the end) feeding the aux exits")
    exit_blocks: Optional[list] = _f(None, "Model", "ViT: 0-indexed blocks feeding the aux exits (null = [7, 9] scaled to depth)")
    aux_head: str = _f("faithful", "Model", "CNN aux head: the published one, its Places-LT variant, or a light one", ["faithful", "faithful_places", "light"])
    aux_width: int = _f(2048, "Model", "CNN aux head width (published: 2048, the last conv doubles it)")
    aux_groups: int = _f(32, "Model", "groups of the aux head's grouped 3x3 conv")
    aux_padding: str = _f("valid", "Model", "padding of the aux head's 3x3 convs (published: valid; 'same' for small images)", ["valid", "same"])
    aux_depth: int = _f(2, "Model", "ViT: transformer blocks per aux exit")
    aux_norm: bool = _f(False, "Model", "ViT: give aux exits the LayerNorm the original meant to (false = faithful)")
    cosine_scale: float = _f(30.0, "Model", "scale of the cosine classifiers")
    drop_path: float = _f(0.0, "Model", "stochastic depth rate of the backbone")
    inference_rule: str = _f("auto", "Model", "how exits combine at inference: auto = last for CNNs, sum for ViTs", ["auto", "last", "sum"])
    channels_last: bool = _f(False, "Model", "channels_last memory format for model and inputs (faster CNNs on GPUs)")
    torch_compile: bool = _f(False, "Model", "compile the model with torch.compile (inductor); minutes of warm-up")
    # ---------------------------------------------------------------- loss
    weight_mode: str = _f("per_sample", "Loss", "cascade weighting: intended per-sample, or the original CNN code's batch scalar", ["per_sample", "batch_scalar_legacy"])
    base_loss: str = _f("auto", "Loss", "per-exit base loss: auto = ce for CNNs, bce (sum over classes) for ViTs", ["auto", "ce", "bce"])
    bins: int = _f(8, "Loss", "confidence bins of the cascade weighting")
    gamma: float = _f(1.0, "Loss", "weight added for a bin holding the whole batch")
    base_weight: float = _f(2.0, "Loss", "weight of an empty bin")
    mixup_alpha: float = _f(0.5, "Loss", "Beta(alpha, alpha) input mixup per batch (0 = off)")
    # ---------------------------------------------------------------- optimisation
    optimizer: str = _f("sgd", "Optimizer", "sgd (CNN recipe) or adamw with layer-wise decay (ViT recipe)", ["sgd", "adamw"])
    lr: float = _f(0.025, "Optimizer", "learning rate (not scaled by batch size, as in the original)")
    backbone_lr: Optional[float] = _f(None, "Optimizer", "backbone learning rate (null = lr; Places-LT ResNet-152 uses 0)")
    momentum: float = _f(0.9, "Optimizer", "SGD momentum")
    weight_decay: float = _f(5e-4, "Optimizer", "weight decay")
    adamw_beta2: float = _f(0.999, "Optimizer", "AdamW beta2")
    layer_decay: float = _f(0.75, "Optimizer", "ViT layer-wise learning-rate decay")
    llrd_decay_aux_heads: bool = _f(True, "Optimizer", "ViT LLRD: aux heads share their branch block's decayed lr "
                                    "(true = the original's imported lr_decay.py); false = its unused duplicate "
                                    "(only aux blocks decayed, aux heads at full lr)")
    epochs: int = _f(200, "Optimizer", "stage-1 epochs")
    batch_size: int = _f(128, "Optimizer", "global training batch size (split over processes)")
    eval_batch_size: int = _f(256, "Optimizer", "evaluation images per forward pass on each process (fixed, so "
                              "results do not depend on the process count)")
    grad_accum_steps: int = _f(1, "Optimizer", "gradient accumulation steps")
    scheduler: str = _f("cosine_epoch", "Optimizer", "cosine_epoch (CNN: per-epoch cosine, no warmup) or warmup_cosine (ViT: per-step)", ["cosine_epoch", "warmup_cosine"])
    warmup_epochs: float = _f(5.0, "Optimizer", "warmup epochs of warmup_cosine")
    min_lr: float = _f(0.0, "Optimizer", "final learning rate")
    # ---------------------------------------------------------------- stage 2
    stage1_dir: Optional[str] = _f(None, "Stage 2", "stage-1 output_dir to start from")
    stage2_method: str = _f("logit_adjustment", "Stage 2", "logit_adjustment (the original) or crt (re-train cosine heads, class-balanced)", ["logit_adjustment", "crt"])
    tau_grid: list = _f([0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5], "Stage 2", "tau values searched on the validation split")
    crt_epochs: int = _f(10, "Stage 2", "cRT epochs")
    crt_lr: float = _f(0.05, "Stage 2", "cRT learning rate")
    crt_exits: str = _f("last", "Stage 2", "which exits' heads cRT re-trains", ["last", "all"])
    crt_batch_size: Optional[int] = _f(None, "Stage 2", "global cRT batch (null = batch_size)")
    crt_reinit: bool = _f(True, "Stage 2", "start cRT from a freshly initialised classifier (Kang et al.) instead of the stage-1 one")
    crt_logit_adjustment: bool = _f(True, "Stage 2", "also choose tau (0 included) on top of cRT")
    exit_weight_step: float = _f(0.1, "Stage 2", "step of the exit-weight grid searched on val (0 = off)")
    # ---------------------------------------------------------------- evaluation
    eval_model: Optional[str] = _f(None, "Evaluation", "model to evaluate: a run folder, a saved model folder or a Hub model id")
    eval_split: str = _f("test", "Evaluation", "split evaluated by evaluate.py")
    eval_test_agnostic: bool = _f(False, "Evaluation", "also score SADE's forward/backward long-tailed test distributions")
    eval_exits: Optional[list] = _f(None, "Evaluation", "exits to sum at evaluation (1-based; null = the model's inference rule)")

    # -- helpers -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: os.PathLike) -> None:
        """Write the fully resolved config, so a run can be repeated from its own output folder."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            yaml.safe_dump(self.to_dict(), fh, sort_keys=False)

    def is_vit(self) -> bool:
        return "vit" in self.backbone or "deit" in self.backbone


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, list(FIELDS), n=1, cutoff=0.0)
    return match[0] if match else ""


def _check_key(key: str, where: str) -> None:
    if key not in FIELDS:
        raise ConfigError(f"unknown config key {key!r} in {where}; did you mean {_closest(key)!r}?")


def _coerce(key: str, value: Any, where: str) -> Any:
    """Convert a parsed value to the field's type, with a message that says what was expected."""
    fld = FIELDS[key]
    ann = str(fld.type)
    optional = ann.startswith("Optional[")
    kind = ann[len("Optional["):-1] if optional else ann
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} in {where} cannot be null")
    ok = True
    if kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            value = value.lower() in ("true", "yes")
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
        value = int(value) if ok else value
    elif kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "list":
        value = [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
        ok = isinstance(value, list)
    elif kind == "str":
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
    if not ok:
        raise ConfigError(f"{key} in {where} should be {ann}, got {value!r}")
    choices = fld.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}={value!r} in {where} is not one of {list(choices)}")
    return value


def preset_names() -> list:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(name_or_path: str, seen: tuple = ()) -> dict:
    """Read a preset (by name) or a YAML file, resolving ``base:`` chains."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            close = difflib.get_close_matches(str(name_or_path), preset_names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"no preset or YAML file named {name_or_path!r}{hint} Presets: {', '.join(preset_names())}")
    if str(path) in seen:
        raise ConfigError(f"preset inheritance loop through {path}")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    base = data.pop("base", None)
    merged = _read_yaml(base, seen + (str(path),)) if base else {}
    for key, value in data.items():
        _check_key(key, str(path))
        merged[key] = _coerce(key, value, str(path))
    return merged


def build_parser(description: str, extra_help: str = "") -> argparse.ArgumentParser:
    """An argparse parser whose flags are the config keys, grouped, with defaults shown (as timm's train.py)."""
    parser = argparse.ArgumentParser(
        description=description, epilog=extra_help, allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-c", "--config", default=None, metavar="PRESET|FILE",
                        help=f"a preset name ({', '.join(preset_names())}) or a YAML file")
    groups = {}
    for name, fld in FIELDS.items():
        group = groups.setdefault(fld.metadata["group"], parser.add_argument_group(f"{fld.metadata['group']} parameters"))
        default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, type=yaml.safe_load, metavar="",
                           help=f"{fld.metadata['help']} (default: {default})")
    return parser


def parse_config(argv: Optional[Sequence[str]] = None, description: str = "", base: Optional[dict] = None) -> RunConfig:
    """Resolve ``defaults < base (e.g. a stage-1 run's config) < --config preset < command line``."""
    parser = build_parser(description)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        bad = unknown[0]
        key = bad.lstrip("-").split("=")[0].replace("-", "_")
        if bad.startswith("-"):
            raise ConfigError(f"unknown option {bad!r}; did you mean '--{_closest(key)}'?")
        raise ConfigError(f"unexpected argument {bad!r}; options take the form --key value")
    values = dict(base or {})
    cli = vars(args)
    preset = cli.pop("config")
    if preset:
        values.update(_read_yaml(preset))
    for key, value in cli.items():
        values[key] = _coerce(key, value, "the command line")
    for key in values:
        _check_key(key, "the base config")
    return RunConfig(**values)


def parse_config_with_base(argv: Optional[Sequence[str]], description: str, base_key: str, base_file) -> RunConfig:
    """Parse twice: first to find the folder named by ``base_key`` (e.g. ``stage1_dir``), whose saved config
    becomes the base that the preset and command line override. ``base_file(folder)`` returns that config's path."""
    first = parse_config(argv, description)
    folder = getattr(first, base_key)
    if not folder:
        raise ConfigError(f"--{base_key} is required")
    path = base_file(folder)
    base = load_run_config(path) if path is not None and Path(path).exists() else {}
    return parse_config(argv, description, base=base)


def load_run_config(path: os.PathLike) -> dict:
    """Read a resolved ``config.yaml`` written by ``RunConfig.save``, checking its keys."""
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    for key, value in data.items():
        _check_key(key, str(path))
        data[key] = _coerce(key, value, str(path))
    return data


def main_error(exc: Exception) -> NoReturn:
    """Print a user error the way argparse does and exit with status 2, instead of a traceback."""
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2)
