"""The Safety III bar (issue 23), end to end on the issue's tiny stage-1 command: a Hub token given on the command
line is found in no byte written or uploaded by stage 1, stage 2, evaluation and their (mocked) pushes; two runs into
one folder (the second is refused, naming the first's pid); resuming another run's checkpoint into a used folder;
exporting into a non-empty folder; a corrupt training image and an empty validation split leave no claimed folder;
an image folder of 16-bit PNGs trains on real pixels (its decoding is tested exactly in test_decoding.py)."""
import contextlib
import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from cadel_modeling import evaluate, train_stage1, train_stage2
from cadel_modeling.config.schema import EVALUATE, STAGE1, STAGE2
from cadel_modeling.utils.run_lock import LOCK_NAME

from conftest import REPO, requires_fashion_mnist

pytestmark = [pytest.mark.slow, requires_fashion_mnist]

COMMANDS = {STAGE1: train_stage1, STAGE2: train_stage2, EVALUATE: evaluate}
TOKEN = "hf_FAKEsecret123"
S1 = ["--config", "fashion_mnist_lt", "--backbone", "test_resnet", "--n_max", "100", "--imb_factor", "10",
      "--image_size", "32", "--batch_size", "32", "--num_workers", "0", "--epochs", "1"]


class RecordingApi:
    """The Hub, offline: records every token it is given and every byte uploaded."""

    tokens, uploads = [], []

    def __init__(self, token=None):
        RecordingApi.tokens.append(token)

    def create_repo(self, repo_id, private=None, exist_ok=False):
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, commit_message, revision=None):
        RecordingApi.uploads += [op.path_or_fileobj for op in operations]


def command(name: str, command_name: str, argv: list, monkeypatch) -> tuple:
    """Run a cadel command in this process as its script would (``sys.argv`` is what runs record); returns its exit
    code and everything it printed."""
    monkeypatch.setattr(sys, "argv", [name] + argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = COMMANDS[command_name].main(argv)
    return code, out.getvalue() + err.getvalue()


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    """Stage 1, stage 2 and evaluation, each pushing with the token on the command line and reporting to
    tensorboard; shared by the tests below (one real run)."""
    import huggingface_hub
    root = tmp_path_factory.mktemp("token")
    out = root / "run"
    hub = ["--push_to_hub", "--hub_token", TOKEN, "--report_to", "tensorboard"]
    printed = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub, "HfApi", RecordingApi)
        for name, which, argv in [
            ("train_stage1.py", STAGE1, S1 + ["--output_dir", str(out), "--hub_model_id", "me/tok"] + hub),
            ("train_stage2.py", STAGE2, ["--stage1_dir", str(out), "--hub_model_id", "me/tok2"] + hub),
            ("evaluate.py", EVALUATE, ["--eval_model", str(out / "stage2_logit_adjustment" / "model"), "--eval_split",
                                       "val", "--hub_model_id", "me/tok3"] + hub)]:
            code, text = command(name, which, argv, mp)
            assert code == 0, text
            printed.append(text)
    return SimpleNamespace(root=root, out=out, printed="\n".join(printed))


def test_the_token_is_in_no_byte_written_printed_or_uploaded(token_run):
    assert RecordingApi.tokens == [TOKEN] * 3 and len(RecordingApi.uploads) > 20  # it was used, three times
    written = {p: p.read_bytes() for p in token_run.root.rglob("*") if p.is_file()}
    assert any("tracking" in p.parts for p in written) and any(p.name == "README.md" for p in written)
    assert [p for p, data in written.items() if TOKEN.encode() in data] == []
    assert [b for b in RecordingApi.uploads if TOKEN.encode() in b] == []
    assert TOKEN not in token_run.printed
    command_line = json.loads((token_run.out / "run_info.json").read_text())["command"]
    assert "--hub_token *** --report_to tensorboard" in command_line  # recorded, redacted


# The second trainer imports everything first and then waits for the first one's lock, so that it reaches the folder
# while the first one trains (a cold start takes longer than this tiny run).
SECOND = ("import os, runpy, sys, time; import cadel_modeling.stages.stage1\n"
          "lock = sys.argv[1]; sys.argv = sys.argv[2:]\n"
          "while not os.path.exists(lock): time.sleep(0.01)\n"
          "runpy.run_path('train_stage1.py', run_name='__main__')")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two real stage-1 processes into one folder, the second started while the first holds it."""
    folder = tmp_path_factory.mktemp("busy") / "d"
    second = subprocess.Popen([sys.executable, "-c", SECOND, str(folder / LOCK_NAME), "train_stage1.py"] + S1
                              + ["--output_dir", str(folder), "--seed", "2"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    first = subprocess.Popen([sys.executable, "train_stage1.py"] + S1 + ["--output_dir", str(folder), "--seed", "1"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, second_err = second.communicate(timeout=300)
    output, _ = first.communicate(timeout=300)
    return SimpleNamespace(folder=folder, first=first, first_output=output, second=second, second_err=second_err)


def test_two_runs_into_one_folder_the_second_is_refused_naming_the_first(two_runs):
    folder, first, second = two_runs.folder, two_runs.first, two_runs.second
    assert first.returncode == 0, two_runs.first_output
    assert second.returncode == 2, two_runs.second_err
    assert two_runs.second_err.splitlines()[0].startswith(f"error: {folder} is in use by another cadel command "
                                                    f"(pid {first.pid} on ")
    assert [json.loads(line)["epoch"] for line in (folder / "train_log.jsonl").read_text().splitlines()] == [1]
    assert "seed: 1\n" in (folder / "config.yaml").read_text() and not (folder / LOCK_NAME).exists()


def test_resuming_another_runs_checkpoint_into_a_used_folder_needs_the_flag(token_run, two_runs, monkeypatch):
    other = two_runs.folder
    foreign = next((token_run.out / "checkpoints").iterdir())
    before = digest(other)
    argv = S1 + ["--output_dir", str(other), "--resume_from_checkpoint", str(foreign)]
    code, text = command("train_stage1.py", STAGE1, argv, monkeypatch)
    assert code == 2 and f"{foreign} is a checkpoint of another run than the one in {other}" in text
    assert "pass --overwrite_output_dir to replace it" in text
    assert digest(other) == before
    code, text = command("train_stage1.py", STAGE1, argv + ["--overwrite_output_dir"], monkeypatch)
    assert code == 0, text
    run_id = json.loads((foreign / "cadel_checkpoint.json").read_text())["run_id"]
    assert json.loads((other / "run_info.json").read_text())["run_id"] == run_id  # one run, the resumed one
    assert not (other / "train_log.jsonl").read_text()  # no record of the replaced run is left to mix with it
    assert "seed: 0\n" in (other / "config.yaml").read_text()


def test_export_into_a_non_empty_folder_or_a_run_folder_is_refused(token_run, tmp_path, capsys):
    from cadel_modeling.export_timm import main
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "own"}')
    before, run_before = digest(mine), digest(token_run.out)
    assert main([str(token_run.out), str(mine)]) == 2
    assert main([str(token_run.out), str(token_run.out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "--overwrite_output_dir" in err[0] and "is a cadel run or model folder" in err[1] and len(err) == 2
    assert digest(mine) == before and digest(token_run.out) == run_before


def test_an_empty_validation_split_is_one_line_and_claims_no_folder(tmp_path, monkeypatch):
    code, text = command("train_stage1.py", STAGE1, S1 + ["--output_dir", str(tmp_path / "v"), "--val_per_class",
                                                          "0"], monkeypatch)
    assert code == 2 and text.startswith("error: the val split is empty") and not (tmp_path / "v").exists()


def test_a_corrupt_training_image_fails_in_one_line_and_the_skip_rerun_runs_there(tmp_path, monkeypatch):
    root = tmp_path / "images"
    for c in ("cat", "dog"):
        for i in range(12):
            (root / "train" / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (20 * i, 100 if c == "cat" else 200, 0)).save(root / "train" / c / f"{i}.png")
            if i < 3:
                (root / "val" / c).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), (0, 0, 20 * i)).save(root / "val" / c / f"{i}.png")
    (root / "train" / "dog" / "5.png").write_bytes((root / "train" / "dog" / "5.png").read_bytes()[:60])
    out = tmp_path / "run"
    argv = ["--dataset", "imagefolder", "--data_dir", str(root), "--backbone", "test_resnet", "--aux_head", "light",
            "--image_size", "16", "--augmentation", "none", "--batch_size", "8", "--num_workers", "0", "--epochs", "1",
            "--output_dir", str(out)]
    code, text = command("train_stage1.py", STAGE1, argv, monkeypatch)
    assert code == 2, text
    [line] = [line for line in text.splitlines() if line.startswith("error:")]
    assert line.startswith("error: cannot read image ") and "5.png" in line and "--bad_image_policy skip" in line
    assert not out.exists()  # nothing to resume: the folder is not claimed
    code, text = command("train_stage1.py", STAGE1, argv + ["--bad_image_policy", "skip"], monkeypatch)
    assert code == 0, text


def test_resuming_with_more_epochs_never_raises_T_and_records_the_change(token_run, tmp_path, monkeypatch):
    import shutil
    run = tmp_path / "longer"
    shutil.copytree(token_run.out, run)
    argv = S1 + ["--output_dir", str(run), "--resume_from_checkpoint", "latest", "--epochs", "3"]
    code, text = command("train_stage1.py", STAGE1, argv + ["--lr", "0.1"], monkeypatch)
    assert code == 2 and "resuming with changed settings (lr 0.05 -> 0.1)" in text and "--allow_changed_config" in text
    code, text = command("train_stage1.py", STAGE1, argv, monkeypatch)
    assert code == 0, text
    assert "--epochs 3 (the run had 1): T and the lr follow the run's 1-epoch schedule and hold their final values " \
           "for epochs 2-3" in text
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["T"], r["lr"]) for r in log] == [(1, 0.0, 0.05), (2, 0.0, 0.05), (3, 0.0, 0.05)]
    info = json.loads((run / "run_info.json").read_text())
    assert info["config_changes"] == [{"key": "epochs", "old": 1, "new": 3, "from_epoch": 2, "from_step": 12}]


def test_a_sixteen_bit_png_set_trains_on_real_pixels_not_blank_ones(tmp_path):
    from test_decoding import imagefolder, write_sixteen_bit

    from cadel_modeling.config import parse_config
    from cadel_modeling.stages import stage1
    root = imagefolder(tmp_path / "data", write_sixteen_bit)
    cfg = parse_config(["--dataset", "imagefolder", "--data_dir", str(root), "--backbone", "test_resnet",
                        "--image_size", "32", "--aux_head", "light", "--augmentation", "none", "--epochs", "1",
                        "--batch_size", "4", "--eval_batch_size", "4", "--num_workers", "0",
                        "--output_dir", str(tmp_path / "run")])
    summary = stage1.run(cfg)
    assert summary["epochs"] == 1 and (tmp_path / "run" / "best_model" / "model.safetensors").exists()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "flat value" not in log  # a plain convert("RGB") saturates every pixel: the blank-split warning fires
