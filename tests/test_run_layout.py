"""The run layout is spelled in one module: no other module of the package writes a run folder or file name."""
import re
from pathlib import Path

from cadel_modeling import run_layout

PACKAGE = Path(run_layout.__file__).parent
NAMES = [run_layout.CONFIG_FILE, run_layout.RUN_INFO_FILE, run_layout.TRAIN_LOG_FILE, run_layout.TEXT_LOG_FILE,
         run_layout.STAGE1_SUMMARY_FILE, run_layout.STAGE2_RESULTS_FILE, run_layout.CHECKPOINTS, run_layout.BEST_MODEL,
         run_layout.LAST_MODEL, run_layout.TRACKING, run_layout.RUN_CONFIG_NAME, run_layout.ENSEMBLE_FILE,
         run_layout.CARD_FILE, *run_layout.RESULT_FILES, run_layout.MODEL_CONFIG_FILE, run_layout.WEIGHTS_FILE,
         run_layout.WEIGHTS_INDEX_FILE, run_layout.TORCH_WEIGHTS_FILE, run_layout.PROCESSOR_FILE,
         *run_layout.CHECKPOINT_FILES]


def test_run_folder_names_are_spelled_only_in_the_layout_module():
    names = "|".join(map(re.escape, NAMES))
    literal = re.compile(rf"[\"'/]({names})[\"'/]|[\"'](stage2|step)_[{{*]|[\"']eval_\*|eval_{{(split|cfg)|"
                         rf"[\"']rng_state_|[\"']\.(tmp|old)[\"']")
    found = [f"{path.relative_to(PACKAGE)}: {m.group(0)}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "run_layout.py" for m in literal.finditer(path.read_text())]
    assert found == ['compare/cli.py: "results.json"',  # cadel-compare's own table folder, not a run folder
                     'utils/io.py: ".tmp"']           # the one atomic write of any file (below run_layout's floor)


def test_stage2_and_eval_folders():
    assert run_layout.stage2_dir("runs/a", "crt") == Path("runs/a/stage2_crt")
    assert run_layout.eval_dir("runs/a/best_model", "val") == Path("runs/a/best_model/eval_val")
    assert run_layout.split_of_eval_dir(Path("runs/a/eval_test")) == "test"


def test_the_run_folder_of_each_kind_of_model_folder():
    run = Path("runs/a")
    assert run_layout.run_dir_of(run / "best_model") == run
    assert run_layout.run_dir_of(run / "last_model") == run
    assert run_layout.run_dir_of(run / "stage2_crt" / "model") == run
    assert run_layout.stage_dir_of(run / "stage2_crt" / "model") == run / "stage2_crt"
    assert run_layout.stage_dir_of(run / "best_model") is None
    assert run_layout.run_dir_of(Path("hub/user__m")) == Path("hub/user__m")  # a standalone model is its own
    assert run_layout.run_dir_of(Path("x/model")) == Path("x/model")  # "model" outside a stage2_ folder


def test_model_folder_names_are_what_transformers_and_a_saved_model_use(tmp_path):
    from types import SimpleNamespace

    from transformers.utils import (
        CONFIG_NAME,
        IMAGE_PROCESSOR_NAME,
        SAFE_WEIGHTS_INDEX_NAME,
        SAFE_WEIGHTS_NAME,
        WEIGHTS_NAME,
    )

    from cadel_modeling.config import RunConfig
    from cadel_modeling.modeling.factory import build_model, save_model
    from cadel_modeling.modeling.locate import find_model_dir

    assert (run_layout.MODEL_CONFIG_FILE, run_layout.PROCESSOR_FILE, run_layout.WEIGHTS_FILE,
            run_layout.WEIGHTS_INDEX_FILE, run_layout.TORCH_WEIGHTS_FILE) == (
        CONFIG_NAME, IMAGE_PROCESSOR_NAME, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME)
    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light")
    data = SimpleNamespace(num_classes=3, class_names=["a", "b", "c"], class_counts=[30, 20, 10], mean=(0.5,) * 3,
                           std=(0.25,) * 3)
    model_dir = tmp_path / run_layout.BEST_MODEL
    save_model(build_model(cfg, data), model_dir, cfg, cfg.augmentation)
    assert {p.name for p in model_dir.iterdir()} >= {"config.json", "preprocessor_config.json", "model.safetensors",
                                                     "run_config.yaml"}
    assert run_layout.holds_model(model_dir) and not run_layout.holds_model(tmp_path)
    assert find_model_dir(str(tmp_path)) == model_dir  # a run folder: its best model
    (tmp_path / "odd" / "config.json").mkdir(parents=True)  # a folder named config.json is no model
    assert not run_layout.holds_model(tmp_path / "odd")
