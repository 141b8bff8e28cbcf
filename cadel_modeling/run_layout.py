"""The run layout: every folder and file name a cadel run uses, in one place (the commands, the stages, the Hub
upload and model lookup all read it from here).

    <output_dir>/                     a stage-1 run folder
        config.yaml, run_info.json, train_log.jsonl, train.log, stage1_summary.json
        checkpoints/ best_model/ last_model/ tracking/
        checkpoints/step_<n>/         model.safetensors, optimizer.pt, training_state.json, rng_state_<process>.json,
                                      cadel_checkpoint.json (training/checkpointing.py writes and checks them)
        best_model/eval_val/          stage 1's evaluation of its best model
        stage2_<method>/              one per stage-2 method: model/, eval_test/, stage2_results.json, tracking/
    <model folder>/                   config.json, model.safetensors, preprocessor_config.json, run_config.yaml,
                                      ensemble.json (stage 2), the remote code; a Hub repository has the same files
    <model folder>/eval_<split>/      an evaluation (results.json, per_class.csv, per_class_accuracy.png)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

CONFIG_FILE = "config.yaml"                # the resolved stage-1 config
RUN_INFO_FILE = "run_info.json"            # command, versions, classes, config changes on resume
TRAIN_LOG_FILE = "train_log.jsonl"         # one line per stage-1 epoch
TEXT_LOG_FILE = "train.log"                # the run's log (and tracebacks)
STAGE1_SUMMARY_FILE = "stage1_summary.json"  # written last: stage 1 finished
STAGE2_RESULTS_FILE = "stage2_results.json"

CHECKPOINTS = "checkpoints"
BEST_MODEL = "best_model"
LAST_MODEL = "last_model"
TRACKING = "tracking"
STAGE2_PREFIX = "stage2_"
EVAL_PREFIX = "eval_"
STAGE2_MODEL = "model"                     # the model folder inside stage2_<method>/
RUN_CONFIG_NAME = "run_config.yaml"        # the run config saved with every model's weights
ENSEMBLE_FILE = "ensemble.json"            # exit weights and their tau learned on validation by stage 2
CARD_FILE = "README.md"                    # the model card
# transformers' names for a model folder's files (CONFIG_NAME, SAFE_WEIGHTS_NAME, ...; checked against them by the
# tests), spelled out so the layout needs no transformers import
MODEL_CONFIG_FILE = "config.json"          # its presence makes a folder a model folder
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # sharded weights
TORCH_WEIGHTS_FILE = "pytorch_model.bin"   # older saves (read by --pretrained_checkpoint only)
PROCESSOR_FILE = "preprocessor_config.json"  # the evaluation transform (image processor)
RESULTS_FILE = "results.json"              # an evaluation: every score variant's metrics
ALL_RESULTS_FILE = "all_results.json"      # the main metrics as flat eval_* keys (HF examples' file)
PER_CLASS_CSV = "per_class.csv"
PER_CLASS_PLOT = "per_class_accuracy.png"
SAVING_SUFFIX = ".tmp"                     # a model folder while it is written (modeling.factory.save_model) ...
REPLACED_SUFFIX = ".old"                   # ... and the folder it replaces, until the rename is done

CHECKPOINT_PREFIX = "step_"                # checkpoints/step_<global step, 8 digits>/
CHECKPOINT_META = "cadel_checkpoint.json"  # what a resuming run must agree with; written last
CHECKPOINT_MODEL_FILE = WEIGHTS_FILE
CHECKPOINT_OPTIMIZER_FILE = "optimizer.pt"
CHECKPOINT_STATE_FILE = "training_state.json"  # loop position, best metric, counters, the scaler
CHECKPOINT_RNG_PATTERN = "rng_state_{}.json"  # one per process
CHECKPOINT_FILES = (CHECKPOINT_META, CHECKPOINT_MODEL_FILE, CHECKPOINT_OPTIMIZER_FILE, CHECKPOINT_STATE_FILE)  # + RNG

RUN_FILES = (CONFIG_FILE, RUN_INFO_FILE, TRAIN_LOG_FILE, STAGE1_SUMMARY_FILE, TEXT_LOG_FILE)  # stage 1's own files
PUBLISHED_RUN_FILES = (CONFIG_FILE, RUN_INFO_FILE, TRAIN_LOG_FILE, STAGE1_SUMMARY_FILE, STAGE2_RESULTS_FILE)  # uploaded
RESULT_FILES = (RESULTS_FILE, ALL_RESULTS_FILE, PER_CLASS_CSV, PER_CLASS_PLOT)  # an eval_<split> folder's files
RUN_FOLDERS = (CHECKPOINTS, BEST_MODEL, LAST_MODEL, TRACKING)
RUN_MARKERS = (CONFIG_FILE, RUN_INFO_FILE, CHECKPOINTS)  # any of these: a cadel run folder
STAGE1_MODELS = (BEST_MODEL, LAST_MODEL)


def holds_model(folder) -> bool:
    """Whether ``folder`` is a model folder (a saved model's config is in it)."""
    return (Path(folder) / MODEL_CONFIG_FILE).is_file()


def checkpoint_name(global_step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{global_step:08d}"


def stage2_dir(run_dir, method: str) -> Path:
    return Path(run_dir) / f"{STAGE2_PREFIX}{method}"


def eval_dir(base, split: str) -> Path:
    return Path(base) / eval_name(split)


def eval_name(split: str) -> str:
    return f"{EVAL_PREFIX}{split}"


def split_of_eval_dir(folder: Path) -> str:
    return folder.name[len(EVAL_PREFIX):]


def stage_dir_of(model_dir: Path) -> Optional[Path]:
    """The stage-2 folder a model folder lies in (``stage2_<method>/model``), or None."""
    if model_dir.name == STAGE2_MODEL and model_dir.parent.name.startswith(STAGE2_PREFIX):
        return model_dir.parent
    return None


def run_dir_of(model_dir: Path) -> Path:
    """The stage-1 run folder a model folder belongs to; a standalone model folder (or a downloaded Hub
    repository) is its own."""
    stage_dir = stage_dir_of(model_dir)
    if stage_dir is not None:
        return stage_dir.parent
    return model_dir.parent if model_dir.name in STAGE1_MODELS else model_dir
