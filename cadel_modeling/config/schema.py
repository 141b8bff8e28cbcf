"""The run configuration: one flat schema (``RunConfig``) for both stages and evaluation.

A preset therefore describes a whole experiment, and every key is also a command-line flag. Each field says which
group it belongs to; each group says which commands use it, so a command's ``--help`` lists only its own flags.
Nothing here imports torch: the commands parse their flags (and report a typo) before the heavy imports.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import yaml

from ..training.tracking import TRACKERS  # no torch: the flags stay quick to parse
from ..utils.io import write_text_atomic
from ..utils.secrets import without_secrets

STAGE1, STAGE2, EVALUATE = "stage1", "stage2", "evaluate"
ALL = (STAGE1, STAGE2, EVALUATE)
# group -> (title shown in --help, the commands that take its flags)
GROUPS = {
    "Run": ("run folder, resume and failure handling", (STAGE1,)),
    "Tracking": ("experiment tracking (accelerate trackers)", ALL),
    "Hub": ("Hugging Face Hub upload", ALL),
    "Dataset": ("data, its long-tailed profile and splits", ALL),
    "Input": ("image size and augmentation (stage 2 and evaluation use the model's)", (STAGE1,)),
    "Model": ("the cascade", (STAGE1,)),
    "Loss": ("stage-1 objective", (STAGE1,)),
    "Optimizer": ("optimiser and schedule", (STAGE1,)),
    "Stage 2": ("post-hoc adjustment or classifier re-training, every choice on validation", (STAGE2,)),
    "Evaluation": ("what is evaluated, and how", (STAGE2, EVALUATE)),
    "Internal": ("", ()),
}
BASE_LOSSES = ("auto", "ce", "bce", "logit_adjusted", "balanced_softmax", "balanced_bce")


def _f(default, group: str, help: str, choices: Optional[Sequence] = None, aliases: Sequence[str] = (),
       commands: Optional[Sequence[str]] = None):
    """A config field: its default, help group, one-line help, allowed values, HF-style alias flags and, when it
    differs from its group's, the commands that take it."""
    meta = {"group": group, "help": help, "choices": choices, "aliases": tuple(aliases),
            "commands": tuple(commands) if commands is not None else GROUPS[group][1]}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    # ---------------------------------------------------------------- run
    output_dir: str = _f("runs/fashion_mnist_lt", "Run", "where checkpoints, logs, configs and results go",
                         commands=(STAGE1, EVALUATE))
    seed: int = _f(0, "Run", "seed of data order, augmentation, mixup and initialisation")
    overwrite_output_dir: bool = _f(False, "Run", "start over in a used output_dir; stage 2: replace stage2_<method>",
                                    commands=(STAGE1, STAGE2))
    resume_from_checkpoint: Optional[str] = _f(None, "Run", "'latest' or a checkpoint folder to resume from")
    allow_changed_config: bool = _f(False, "Run", "resume with changed lr, seed, data, ... (recorded in run_info.json)")
    checkpointing_steps: Optional[int] = _f(None, "Run", "also checkpoint every N optimizer steps (always per epoch; "
                                            "'epoch' = per epoch only)")
    keep_last_checkpoints: int = _f(2, "Run", "resumable checkpoints to keep", aliases=("save_total_limit",))
    on_nonfinite_loss: str = _f("skip", "Run", "a NaN/inf loss: skip the step (weights and BatchNorm statistics "
                                "untouched) or stop", ["skip", "stop"])
    max_skipped_steps: int = _f(10, "Run", "consecutive skipped steps that turn into a stop (diverged run)")
    num_workers: int = _f(2, "Run", "DataLoader worker processes per process", commands=ALL)
    log_every: int = _f(50, "Run", "every N optimizer steps a line (loss, lr, img/s, ETA) to train.log, console, "
                        "trackers (0 = off)", aliases=("logging_steps",))
    mixed_precision: Optional[str] = _f(None, "Run", "mixed precision (default: accelerate's config)",
                                        ["no", "fp16", "bf16"])
    # ---------------------------------------------------------------- tracking
    report_to: str = _f("none", "Tracking", f"trackers: none, all, or a comma list ({', '.join(TRACKERS)})")
    with_tracking: bool = _f(False, "Tracking", "HF-examples switch: with report_to none, report to all installed")
    tracking_dir: Optional[str] = _f(None, "Tracking", "where file trackers write (default <output_dir>/tracking)")
    run_name: Optional[str] = _f(None, "Tracking", "tracker run name (default: the output_dir's name)")
    # ---------------------------------------------------------------- hub
    push_to_hub: bool = _f(False, "Hub", "upload the model, configs, results and a model card when done")
    hub_model_id: Optional[str] = _f(None, "Hub", "Hub repository id (default: the run folder's name)")
    hub_private: bool = _f(False, "Hub", "create the repository as private")
    hub_license: str = _f("other", "Hub", "licence in the model card; the data's terms bind the weights too "
                          "(ImageNet, iNat and Places are research-only)")
    hub_revision: Optional[str] = _f(None, "Hub", "branch to push to (created if missing; default main)")
    hub_commit_message: Optional[str] = _f(None, "Hub", "commit message of the upload")
    hub_token: Optional[str] = _f(None, "Hub", "prefer HF_TOKEN or `huggingface-cli login` (not in ps); never "
                                  "saved, shown ***")
    # ---------------------------------------------------------------- data
    dataset: str = _f("fashion_mnist_lt", "Dataset", "dataset builder", ["fashion_mnist_lt", "imagenet_lt",
                      "places_lt", "inat18", "cifar10_lt", "cifar100_lt", "imagefolder", "hub"])
    data_dir: Optional[str] = _f(None, "Dataset", "local data root (split lists, images, idx or pickle files)")
    image_root: Optional[str] = _f(None, "Dataset", "image folder of split-list datasets (default data_dir)")
    hub_dataset_id: Optional[str] = _f(None, "Dataset", "Hub dataset id, local dataset folder or 'imagefolder' "
                                       "(implies --dataset hub)", aliases=("dataset_name",))
    hub_dataset_config: Optional[str] = _f(None, "Dataset", "configuration name of the Hub dataset",
                                           aliases=("dataset_config_name",))
    hub_dataset_revision: Optional[str] = _f(None, "Dataset", "revision (branch, tag, commit) of the Hub dataset")
    train_dir: Optional[str] = _f(None, "Dataset", "a folder of <class>/<image> training images (implies "
                                  "--dataset imagefolder)")
    validation_dir: Optional[str] = _f(None, "Dataset", "with --train_dir: <class>/<image> validation images")
    image_column: str = _f("image", "Dataset", "image column of Hub / folder datasets",
                           aliases=("image_column_name",))
    label_column: str = _f("label", "Dataset", "label column of Hub / folder datasets",
                           aliases=("label_column_name",))
    num_classes: Optional[int] = _f(None, "Dataset", "expected number of classes, checked against the data")
    imb_factor: Optional[float] = _f(None, "Dataset", "make the training split long-tailed: n_max/n_min (built-in "
                                     "*_lt data: 100; your own data: used as it is)")
    imb_type: str = _f("exp", "Dataset", "long-tailed profile", ["exp", "step"])
    n_max: Optional[int] = _f(None, "Dataset", "images of the largest class in a long-tailed profile (default: the "
                              "dataset's, or the smallest class of balanced data)")
    val_per_class: int = _f(20, "Dataset", "validation images per class carved from unused training images "
                            "(where the data has no validation split, or for a long-tailed profile)")
    export_dataset: Optional[str] = _f(None, "Dataset", "also write the exact splits used to this folder "
                                       "(save_to_disk) or Hub dataset id (push_to_hub)", commands=(STAGE1,))
    bad_image_policy: str = _f("fail", "Dataset", "an unreadable image: fail with a report, or skip and count it",
                               ["fail", "skip"])
    streaming: bool = _f(False, "Dataset", "stream the training split (IterableDataset)", commands=(STAGE1,))
    shuffle_buffer: int = _f(10000, "Dataset", "shuffle buffer of a streamed training split", commands=(STAGE1,))
    sampler: str = _f("instance", "Dataset", "training sampler", ["instance", "class_balanced", "sqrt"],
                      commands=(STAGE1,))
    # ---------------------------------------------------------------- input
    image_size: int = _f(224, "Input", "training / evaluation crop size")
    augmentation: str = _f("imagenet", "Input", "train augmentation recipe", ["imagenet", "small", "none"])
    hflip: bool = _f(True, "Input", "random horizontal flips in training (off for digits, text, ...)")
    color_jitter: float = _f(0.4, "Input", "ColorJitter strength of 'imagenet' (0 = off; iNat18 uses 0)")
    decode_on_gpu: bool = _f(False, "Input", "decode JPEGs and augment on the accelerator (CPU fallback)")
    reduced_decode: bool = _f(True, "Input", "decode a JPEG at 1/2, 1/4 or 1/8 size (DCT scaling) when its crop or "
                              "resize still gets at least the output's pixels (faster; false: always full size)")
    # ---------------------------------------------------------------- model
    backbone: str = _f("resnet50", "Model", "timm model name")
    backbone_kwargs: dict = _f({}, "Model", "extra keyword arguments of timm.create_model")
    pretrained: bool = _f(False, "Model", "timm's pretrained weights for the backbone (needs the Hub)")
    pretrained_checkpoint: Optional[str] = _f(None, "Model", "a .pth/.safetensors checkpoint or saved model folder "
                                              "(MAE/LiVT {'model': ...} works)")
    init_from: Optional[str] = _f(None, "Model", "start from a cadel model folder or Hub id: backbone, and heads "
                                  "where shapes match")
    exit_stages: list = _f([-3, -2], "Model", "CNN: feature stages feeding the aux exits (negative: from the end)")
    exit_blocks: Optional[list] = _f(None, "Model", "ViT: 0-indexed blocks feeding the aux exits (default [7, 9] "
                                     "scaled to depth)")
    aux_head: str = _f("faithful", "Model", "CNN aux head: published, its Places-LT variant, or light",
                       ["faithful", "faithful_places", "light"])
    aux_width: int = _f(2048, "Model", "CNN aux head width (published 2048; the last conv doubles it)")
    aux_groups: int = _f(32, "Model", "groups of the aux head's grouped 3x3 conv")
    aux_padding: str = _f("valid", "Model", "aux head 3x3 padding (published valid; same for small images)",
                          ["valid", "same"])
    aux_depth: int = _f(2, "Model", "ViT: transformer blocks per aux exit")
    aux_norm: bool = _f(False, "Model", "ViT: give aux exits the LayerNorm the original meant to (false = faithful)")
    cosine_scale: float = _f(30.0, "Model", "scale of the cosine classifiers")
    drop_path: float = _f(0.0, "Model", "stochastic depth rate of the backbone")
    inference_rule: str = _f("auto", "Model", "how exits combine at inference: auto = last for CNNs, sum for ViTs",
                             ["auto", "last", "sum"])
    channels_last: bool = _f(False, "Model", "channels_last memory format (faster CNNs on GPUs)")
    torch_compile: bool = _f(False, "Model", "torch.compile the model (inductor); minutes of warm-up")
    # ---------------------------------------------------------------- loss
    weight_mode: str = _f("per_sample", "Loss", "cascade weighting: per-sample (intended) or the original CNN "
                          "code's batch scalar", ["per_sample", "batch_scalar_legacy"])
    base_loss: str = _f("auto", "Loss", "per-exit loss: auto = ce (CNN) / bce (ViT); logit_adjusted, "
                        "balanced_softmax and balanced_bce are beyond the paper", BASE_LOSSES)
    bins: int = _f(8, "Loss", "confidence bins of the cascade weighting")
    gamma: float = _f(1.0, "Loss", "weight added for a bin holding the whole batch")
    base_weight: float = _f(2.0, "Loss", "weight of an empty bin")
    mixup_alpha: float = _f(0.5, "Loss", "Beta(alpha, alpha) input mixup per batch (0 = off)")
    # ---------------------------------------------------------------- optimisation
    optimizer: str = _f("sgd", "Optimizer", "sgd (CNN recipe) or adamw with layer-wise decay (ViT)",
                        ["sgd", "adamw"])
    lr: float = _f(0.025, "Optimizer", "learning rate (not scaled by the batch size, as the original)",
                   aliases=("learning_rate",))
    backbone_lr: Optional[float] = _f(None, "Optimizer", "backbone learning rate (default lr; Places-LT R152: 0)")
    momentum: float = _f(0.9, "Optimizer", "SGD momentum")
    weight_decay: float = _f(5e-4, "Optimizer", "weight decay")
    adamw_beta2: float = _f(0.999, "Optimizer", "AdamW beta2")
    layer_decay: float = _f(0.75, "Optimizer", "ViT layer-wise learning-rate decay")
    llrd_decay_aux_heads: bool = _f(True, "Optimizer", "ViT LLRD: aux heads share their branch block's lr (true, the "
                                    "original) or train at full lr (its unused duplicate)")
    epochs: int = _f(200, "Optimizer", "stage-1 epochs", aliases=("num_train_epochs",))
    batch_size: int = _f(128, "Optimizer", "GLOBAL training batch (split over processes and accumulation steps)",
                         commands=(STAGE1, STAGE2))
    per_device_train_batch_size: Optional[int] = _f(None, "Optimizer", "HF-style per-process micro-batch: sets "
                                                    "batch_size = it x processes x grad_accum_steps")
    grad_accum_steps: int = _f(1, "Optimizer", "gradient accumulation steps", aliases=("gradient_accumulation_steps",))
    scheduler: str = _f("cosine_epoch", "Optimizer", "per-epoch cosine without warmup (CNN) or per-step warmup "
                        "then cosine (ViT; HF 'cosine')", ["cosine_epoch", "warmup_cosine"],
                        aliases=("lr_scheduler_type",))
    warmup_epochs: float = _f(5.0, "Optimizer", "warmup epochs of warmup_cosine")
    min_lr: float = _f(0.0, "Optimizer", "final learning rate")
    # ---------------------------------------------------------------- stage 2
    stage1_dir: Optional[str] = _f(None, "Stage 2", "the stage-1 output_dir to start from (required)")
    stage2_method: str = _f("logit_adjustment", "Stage 2", "logit_adjustment (the original) or crt (re-train the "
                            "cosine heads, class-balanced)", ["logit_adjustment", "crt"])
    tau_grid: list = _f([0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5], "Stage 2", "tau values searched on validation")
    crt_epochs: int = _f(10, "Stage 2", "cRT epochs")
    crt_lr: float = _f(0.05, "Stage 2", "cRT learning rate")
    crt_exits: str = _f("last", "Stage 2", "which exits' heads cRT re-trains", ["last", "all"])
    crt_batch_size: Optional[int] = _f(None, "Stage 2", "global cRT batch (default batch_size)")
    crt_reinit: bool = _f(True, "Stage 2", "start cRT from a fresh classifier (Kang et al.), not stage 1's")
    crt_logit_adjustment: bool = _f(True, "Stage 2", "also choose tau (0 included) on top of cRT")
    exit_weight_step: float = _f(0.1, "Stage 2", "step of the exit-weight grid searched on val (0 = off)")
    select_inference_rule: bool = _f(False, "Stage 2", "save the best of last exit / sum / learned exit weights on "
                                     "val as the model's rule when the evidence is strong (beyond the paper; "
                                     "default: the paper's rule)")
    select_rule_confidence: float = _f(0.95, "Stage 2", "select_inference_rule moves away from the model's rule only "
                                       "if the best on val is ahead in this fraction of paired bootstrap resamples "
                                       "of the val images (0: whenever ahead on val)")
    select_rule_resamples: int = _f(1000, "Stage 2", "bootstrap resamples of the val images for that test")
    # ---------------------------------------------------------------- evaluation
    eval_model: Optional[str] = _f(None, "Evaluation", "run folder, model folder or Hub model id (required)",
                                   commands=(EVALUATE,))
    eval_split: str = _f("test", "Evaluation", "split to evaluate", commands=(EVALUATE,))
    eval_batch_size: int = _f(256, "Evaluation", "images per forward pass and process (fixed, so results do not "
                              "depend on the process count)", aliases=("per_device_eval_batch_size",), commands=ALL)
    eval_test_agnostic: bool = _f(False, "Evaluation", "also score SADE's forward/backward long-tailed test "
                                  "distributions")
    eval_exits: Optional[list] = _f(None, "Evaluation", "exits to sum (1-based; default: the model's rule)")
    # ---------------------------------------------------------------- internal
    run_id: Optional[str] = _f(None, "Internal", "set by stage 1: which run a config, model or checkpoint belongs to")
    dropped_preset_keys: Optional[dict] = _f(None, "Internal", "set by the parser: the preset's dataset-only keys "
                                             "left out because the run reads other data")
    schedule_epochs: Optional[int] = _f(None, "Internal", "set by stage 1: the epochs the T and lr schedules span "
                                        "(the run's first --epochs; a longer run holds their final values after)")

    # -- helpers -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: os.PathLike) -> None:
        """Write the fully resolved config (the token never), so a run can be repeated from its own folder."""
        write_text_atomic(path, yaml.safe_dump(without_secrets(self.to_dict()), sort_keys=False))

    def family(self) -> str:
        """'cnn' or 'vit' (the one rule in ``modeling.backbones``; imports timm)."""
        from ..modeling.backbones import backbone_family
        return backbone_family(self.backbone)

    def resolved_base_loss(self) -> str:
        if self.base_loss != "auto":
            return self.base_loss
        from ..modeling.backbones import default_base_loss
        return default_base_loss(self.family())


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
ALIASES = {alias: name for name, f in FIELDS.items() for alias in f.metadata["aliases"]}


def fields_of(command: str) -> dict:
    """The fields a command takes as flags."""
    return {name: f for name, f in FIELDS.items() if command in f.metadata["commands"]}
