"""Safety III (issue 23), the fast half: secrets redacted at their source, the run-folder lock (two real processes,
a stale lock), refusals that change no file, cadel's user-error types against internal errors, one-line messages,
the resume rules and stage 2's record of stage 1. The end-to-end probes are in test_safety_bar.py."""
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from cadel_modeling import cli, train_stage1
from cadel_modeling.config import ConfigError, RunConfig, parse_config
from cadel_modeling.config.schema import STAGE1
from cadel_modeling.data import build_datasets
from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.modeling.factory import load_model, save_model
from cadel_modeling.modeling.locate import find_model_dir
from cadel_modeling.stages.run_folder import check_resume_settings, folder_state, result_settings
from cadel_modeling.training.losses import annealing_T
from cadel_modeling.training.optim import LRSchedule
from cadel_modeling.utils.errors import DiskFullError, ModelError, OutputDirError, UserError
from cadel_modeling.utils.run_lock import LOCK_NAME, RunFolderBusy, RunLock

from conftest import REPO

TOKEN = "hf_FAKEsecret123"


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_model(folder: Path, num_labels: int = 4) -> Path:
    config = CadelConfig(backbone="test_resnet", num_labels=num_labels, image_size=32, aux_head="light",
                         class_counts=[10] * num_labels, id2label={i: f"c{i}" for i in range(num_labels)},
                         label2id={f"c{i}": i for i in range(num_labels)})
    torch.manual_seed(0)
    save_model(CadelForImageClassification(config).eval(), folder,
               RunConfig(backbone="test_resnet", image_size=32, aux_head="light"), "small")
    return folder


# -- secrets -------------------------------------------------------------------------------------------------------

def test_recorded_commands_and_tracker_configs_hold_no_token(monkeypatch):
    from cadel_modeling.training.tracking import scalar_config
    from cadel_modeling.utils.io import command_line
    argv = ["/x/train_stage1.py", "--hub_token", TOKEN, "--lr", "0.1", f"--hub-token={TOKEN}"]
    monkeypatch.setattr(sys, "argv", argv)
    assert command_line() == "train_stage1.py --hub_token *** --lr 0.1 --hub-token=***"
    assert scalar_config(RunConfig(hub_token=TOKEN).to_dict())["hub_token"] is None


def test_an_upload_of_an_old_run_recorded_with_the_token_is_clean(tmp_path):
    from cadel_modeling.hub.publish import upload_bytes
    (tmp_path / "run_info.json").write_text(json.dumps({"command": f"train_stage1.py --hub_token {TOKEN} --lr 1",
                                                        "hub_token": TOKEN}))
    (tmp_path / "README.md").write_text(f"- Stage 1: `train_stage1.py --hub_token {TOKEN}`\n")
    for name in ("run_info.json", "README.md"):
        assert TOKEN.encode() not in upload_bytes(tmp_path / name, tmp_path)
    assert b"--hub_token ***" in upload_bytes(tmp_path / "README.md", tmp_path)


def test_help_says_to_prefer_the_saved_login(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"], STAGE1)
    text = " ".join(capsys.readouterr().out.split())
    assert "prefer HF_TOKEN or `huggingface-cli login` (not in ps); never saved, shown ***" in text


# -- one writer per run folder -------------------------------------------------------------------------------------

HOLDER = ("import sys, time; from cadel_modeling.utils.run_lock import RunLock; lock = RunLock(sys.argv[1]).acquire();"
          " print('held', flush=True); time.sleep(60)")


def test_a_second_command_is_refused_while_another_process_holds_the_folder(tmp_path):
    folder = tmp_path / "runs" / "d"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"{folder} is in use by another cadel command \(pid {holder.pid} on "
                                                rf"{socket.gethostname()}, since .*\); wait for it to finish"):
            RunLock(folder).acquire()
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid  # the holder's lock is untouched
    finally:
        holder.kill()
        holder.wait()
    with RunLock(folder):  # the kernel dropped the dead holder's flock: the folder is free (stale file reclaimed)
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()
    with RunLock(tmp_path / "new" / "d"):
        pass
    assert not (tmp_path / "new").exists()  # release removes the folders that taking the lock created


def test_a_stale_lock_of_a_process_that_is_gone_is_reclaimed_with_a_warning(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "x"}))
    with caplog.at_level(logging.WARNING, logger="cadel"), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"reclaimed a stale lock of pid {gone.pid}" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists() and tmp_path.is_dir()  # a folder it did not create stays


def test_a_lock_file_of_a_live_process_is_respected_even_without_its_flock(tmp_path):
    # a file system without flock: the pid on this host is the only evidence, and it runs
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(RunFolderBusy, match=f"pid {os.getppid()}"):
        RunLock(tmp_path).acquire()


def test_the_lock_file_is_not_counted_as_a_file_of_the_folder(tmp_path):
    with RunLock(tmp_path / "new"):
        assert folder_state(tmp_path / "new") == "empty"
        (tmp_path / "new" / "config.yaml").write_text("a: 1\n")
        assert folder_state(tmp_path / "new") == "run"


def test_a_model_folder_left_half_saved_by_a_crash_still_counts_as_the_runs():
    # save_model writes best_model.tmp, then moves the old folder to best_model.old: a crash between leaves them
    for leftover in ("best_model.tmp", "best_model.old", "last_model.tmp"):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "config.yaml").write_text("a: 1\n")
            (Path(folder) / leftover).mkdir()
            assert folder_state(Path(folder)) == "run", leftover
            (Path(folder) / "best_model.bak").mkdir()            # any other suffix is not cadel's
            assert folder_state(Path(folder)) == "other"


# -- nothing replaced without being asked --------------------------------------------------------------------------

def test_export_refuses_a_non_empty_folder_and_any_run_folder(tmp_path, capsys):
    from cadel_modeling.export_timm import main
    model = tiny_model(tmp_path / "run" / "best_model")
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    before = tree_digest(tmp_path)
    assert main([str(model), str(mine)]) == 2
    assert "mine is not empty; choose a new folder, or pass --overwrite_output_dir" in capsys.readouterr().err
    for target in (tmp_path / "run", model):  # the run folder itself, and its model folder
        assert main([str(tmp_path / "run"), str(target), "--overwrite_output_dir"]) == 2
        assert "is a cadel run or model folder" in capsys.readouterr().err
    assert tree_digest(tmp_path) == before
    assert main([str(model), str(mine), "--overwrite_output_dir"]) == 0
    assert json.loads((mine / "config.json").read_text())["architecture"] == "test_resnet"


def test_stage2_refuses_to_replace_a_stage2_result_without_the_flag(tmp_path):
    from cadel_modeling.stages import stage2
    tiny_model(tmp_path / "run" / "best_model")
    (tmp_path / "run" / "stage2_logit_adjustment").mkdir()
    (tmp_path / "run" / "stage2_logit_adjustment" / "stage2_results.json").write_text("{}")
    before = tree_digest(tmp_path)
    cfg, model_dir = cli.resolve_config("stage2", ["--stage1_dir", str(tmp_path / "run")], "")
    with pytest.raises(OutputDirError, match="already holds a stage-2 result; pass --overwrite_output_dir"):
        stage2.run(cfg, model_dir)
    assert tree_digest(tmp_path) == before


def test_tau_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"tau_grid in the command line must be a non-empty list of numbers, each 0 "
                                          r"or more .*got \[-1.0\]"):
        parse_config(["--tau_grid", "[-1.0]"], "stage2")


# -- error classes -------------------------------------------------------------------------------------------------

def test_only_cadels_user_errors_exit_2_and_an_internal_error_exits_1_with_a_pointer(tmp_path, monkeypatch,
                                                                                     capsys):
    from cadel_modeling.stages import stage1
    argv = ["--output_dir", str(tmp_path / "out")]
    monkeypatch.setattr(stage1, "run", lambda cfg: torch.cat([]))  # a bug: a library's ValueError/RuntimeError
    assert train_stage1.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("internal error: ValueError: torch.cat(): expected a non-empty list of Tensors")
    assert "a bug in cadel" in err[1] and "not a problem with your input" in err[1]
    log = Path(err[1].split("(details: ")[1].split(";")[0])
    assert "Traceback (most recent call last)" in log.read_text()

    def user_error(cfg):
        raise OutputDirError("that folder is taken")
    monkeypatch.setattr(stage1, "run", user_error)
    assert train_stage1.main(argv) == 2
    assert capsys.readouterr().err.startswith("error: that folder is taken\n")
    assert not (tmp_path / "out").exists()  # in both cases no folder is claimed


def test_a_failure_before_the_first_checkpoint_leaves_no_claimed_folder(tmp_path, monkeypatch, capsys):
    from cadel_modeling.stages import stage1

    def fails_after_writing(cfg):
        Path(cfg.output_dir, "config.yaml").write_text("seed: 0\n")
        Path(cfg.output_dir, "train.log").write_text("started\n")
        raise KeyError("late")
    monkeypatch.setattr(stage1, "run", fails_after_writing)
    assert train_stage1.main(["--output_dir", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()
    used = tmp_path / "used"  # a folder that held a run before is never cleaned up on failure
    used.mkdir()
    (used / "run_info.json").write_text("{}")
    assert train_stage1.main(["--output_dir", str(used), "--overwrite_output_dir"]) == 1
    assert (used / "config.yaml").is_file()


def test_user_error_types_keep_the_builtins_callers_catch():
    from cadel_modeling.data import UnreadableImageError
    from cadel_modeling.training.checkpointing import CheckpointError
    assert issubclass(ConfigError, ValueError) and issubclass(CheckpointError, ValueError)
    assert issubclass(UnreadableImageError, RuntimeError) and issubclass(OutputDirError, FileExistsError)
    assert all(issubclass(e, UserError) for e in (ConfigError, CheckpointError, UnreadableImageError, ModelError))


def test_an_error_in_a_dataloader_worker_is_shown_as_its_own_line():
    wrapped = RuntimeError("Caught UnreadableImageError in DataLoader worker process 0.\nOriginal Traceback (most "
                           "recent call last):\n  File \"x.py\", line 1\ncadel_modeling.data.transforms."
                           "UnreadableImageError: cannot read image a.jpg: truncated")
    assert cli.message(wrapped) == "cannot read image a.jpg: truncated"


@pytest.mark.parametrize("damage, expected", [
    ("delete", "has no model.safetensors: the model folder is incomplete"),
    ("truncate", "cannot load the model in .*SafetensorError: Error while deserializing header"),
    ("id2label", "cannot load the model in .*ValueError: the config has 4 class counts for 2 labels"),
])
def test_missing_truncated_or_edited_weights_are_one_line_model_errors(tmp_path, damage, expected):
    model = tiny_model(tmp_path / "m")
    weights = model / "model.safetensors"
    if damage == "delete":
        weights.unlink()
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        config = json.loads((model / "config.json").read_text())
        config["id2label"] = {"0": "c0", "1": "c1"}
        (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=expected):
        load_model(model)


def test_a_full_disk_names_the_folder_and_the_space_needed(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from cadel_modeling.training import checkpointing
    from cadel_modeling.utils import io

    def full(*args, **kwargs):  # what torch's writer says when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1042")
    monkeypatch.setattr(checkpointing.torch, "save", full)
    monkeypatch.setattr(io, "free_bytes", lambda folder: 3 * 2**20)
    model = torch.nn.Linear(1000, 1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DiskFullError, match=rf"no space left writing to {tmp_path / 'checkpoints'}: 3.0 MiB free, "
                                            r"about 3.8 MiB needed; free space there"):
        checkpointing.save_checkpoint(Accelerator(cpu=True), model, optimizer, checkpointing.TrainState(), tmp_path,
                                      2, {})
    assert not list((tmp_path / "checkpoints").iterdir())  # the partial checkpoint is gone, the space given back


def write_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_single_class_and_empty_class_folders_are_named(tmp_path):
    root = tmp_path / "one"
    write_png(root / "train" / "cat" / "a.png")
    with pytest.raises(UserError, match=r"train has one class folder \(cat\); classification needs at least 2"):
        build_datasets(RunConfig(dataset="imagefolder", data_dir=str(root)))
    (root / "train" / "dog").mkdir()
    with pytest.raises(UserError, match=r"train has class folders without images: \['dog'\]; every class needs "
                                        r"training images"):
        build_datasets(RunConfig(dataset="imagefolder", data_dir=str(root), imb_factor=10))


def test_an_empty_validation_split_is_refused_before_training(tmp_path):
    from conftest import FASHION_MNIST_DIR
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST idx files missing")
    with pytest.raises(UserError, match=r"the val split is empty: .* pass --val_per_class 1 or more"):
        build_datasets(RunConfig(n_max=20, imb_factor=10, val_per_class=0))


def test_a_tracking_dir_under_a_file_is_refused(tmp_path):
    from cadel_modeling.training.tracking import tracking_kwargs
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"--tracking_dir .*afile/sub: .*afile is a file, not a folder"):
        tracking_kwargs("tensorboard", str(tmp_path / "afile" / "sub"), tmp_path / "tracking")


# -- resume tells the truth ----------------------------------------------------------------------------------------

def test_changed_settings_on_resume_are_refused_unless_allowed_and_then_recorded():
    run = RunConfig(lr=0.05, seed=1, epochs=2)
    meta = {"epoch": 2, "global_step": 12, "epochs": 2, "hparams": result_settings(run)}
    check_resume_settings(RunConfig(lr=0.05, seed=1, epochs=2, num_workers=8, log_every=0), meta)  # free keys
    with pytest.raises(ConfigError, match=r"resuming with changed settings \(seed 1 -> 5, lr 0.05 -> 0.5\), .* "
                                          r"--allow_changed_config to apply them from epoch 2 on"):
        check_resume_settings(RunConfig(lr=0.5, seed=5, epochs=2), meta)
    changes = check_resume_settings(RunConfig(lr=0.5, seed=1, epochs=2, allow_changed_config=True), meta)
    assert changes == [{"key": "lr", "old": 0.05, "new": 0.5, "from_epoch": 2, "from_step": 12}]


def test_more_epochs_on_resume_keep_the_schedule_and_hold_its_end(caplog):
    run = RunConfig(epochs=2, lr=0.1)
    meta = {"epoch": 3, "global_step": 24, "epochs": 2, "hparams": result_settings(run)}
    longer = RunConfig(epochs=4, lr=0.1)
    with caplog.at_level(logging.WARNING, logger="cadel"):
        changes = check_resume_settings(longer, meta)
    assert changes == [{"key": "epochs", "old": 2, "new": 4, "from_epoch": 3, "from_step": 24}]
    assert "hold their final values for epochs 3-4" in caplog.text
    assert longer.schedule_epochs == 2
    schedule = LRSchedule.from_config(longer)
    S = schedule.epochs
    T = [annealing_T(min(e, S), S) for e in range(1, 5)]  # what the loop computes
    assert T == [0.5, 0.0, 0.0, 0.0]  # before the fix: 0.5, 0.0, 0.25, 0.0
    assert [schedule.at(e) for e in range(1, 5)] == [0.1, 0.05, 0.05, 0.05]  # cos: 0.1 * (1 + cos(pi/2)) / 2
    warm = LRSchedule("warmup_cosine", 0.1, 4, warmup_epochs=1)
    assert warm.at(5, 0, 10) == warm.at(7, 3, 10) == warm.at(4, 9, 10)  # held at the schedule's last step
    assert result_settings(longer) == {**result_settings(run), "schedule_epochs": 2}  # a second resume agrees


def test_stage2_records_whether_stage1_finished(tmp_path):
    from cadel_modeling.stages.stage2 import stage1_progress
    RunConfig(epochs=4).save(tmp_path / "config.yaml")
    (tmp_path / "train_log.jsonl").write_text('{"epoch": 1}\n')
    assert stage1_progress(tmp_path) == {"finished": False, "epochs_done": 1, "epochs": 4, "summary": False}
    (tmp_path / "train_log.jsonl").write_text("".join(f'{{"epoch": {e}}}\n' for e in range(1, 5)))
    (tmp_path / "stage1_summary.json").write_text("{}")
    assert stage1_progress(tmp_path)["finished"]



def test_each_command_locks_the_run_folder_it_writes_into(tmp_path):
    run = tmp_path / "run"
    tiny_model(run / "best_model")
    tiny_model(run / "stage2_crt" / "model")
    assert cli.run_folder(STAGE1, RunConfig(output_dir=str(run)), None) == run
    assert cli.run_folder("stage2", RunConfig(stage1_dir=str(run)), run / "best_model") == run
    for model in (run, run / "best_model", run / "stage2_crt" / "model"):
        assert cli.run_folder("evaluate", RunConfig(eval_model=str(model)), find_model_dir(str(model))) == run
    hub = RunConfig(eval_model="someone/model", output_dir=str(tmp_path / "out"))
    assert cli.run_folder("evaluate", hub, tmp_path / "cache" / "snapshot") == tmp_path / "out"


def test_an_error_that_quotes_the_token_is_printed_and_logged_redacted(tmp_path, monkeypatch):
    from cadel_modeling import cli
    token = "hf_" + "FAKEsecret" * 4
    exc = ValueError(f"401 for --hub_token={token} (token {token})")
    assert token not in cli.message(exc) and "***" in cli.message(exc)
    monkeypatch.setattr(cli.tempfile, "tempdir", str(tmp_path))
    where = cli._record_traceback(exc)
    assert token not in where.read_text() and "--hub_token=***" in where.read_text()
