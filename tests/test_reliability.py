"""Resume after a real preemption signal, determinism, non-finite losses, mismatched checkpoints, two processes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cadel_modeling.config import parse_config
from cadel_modeling.stages import stage1
from cadel_modeling.training.checkpointing import list_checkpoints
from cadel_modeling.training.loop import NonFiniteLossError
from cadel_modeling.training.losses import CascadeLoss

from conftest import REPO, requires_fashion_mnist

pytestmark = [pytest.mark.slow, requires_fashion_mnist]

TINY = ["--config", "fashion_mnist_lt", "--backbone", "test_resnet", "--n_max", "60", "--imb_factor", "10",
        "--val_per_class", "10", "--epochs", "2", "--batch_size", "16", "--eval_batch_size", "100",
        "--lr", "0.05", "--log_every", "0"]


def tiny(out, *extra):
    return parse_config(TINY + ["--output_dir", str(out)] + list(extra))


def log_of(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def strip_times(log):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in log]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    stage1.run(tiny(out))
    return out


def test_same_seed_gives_identical_runs(reference_run, tmp_path):
    stage1.run(tiny(tmp_path / "again"))
    assert strip_times(log_of(tmp_path / "again")) == strip_times(log_of(reference_run))
    assert same_weights(tmp_path / "again" / "last_model", reference_run / "last_model")


def test_killed_run_resumes_to_the_same_result(reference_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "train_stage1.py"] + TINY + ["--output_dir", str(out), "--checkpointing_steps", "3"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # wait for the first mid-epoch checkpoint
        if (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step_*")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGTERM)  # what a preempting scheduler sends
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 75, output  # EX_TEMPFAIL: preempted, resume it
    assert "stopped: stopped by SIGTERM" in output and "--resume_from_checkpoint latest" in output
    saved = json.loads((list_checkpoints(out)[-1] / "cadel_checkpoint.json").read_text())
    assert saved["global_step"] >= 3 and not (out / "last_model").exists()

    stage1.run(tiny(out, "--resume_from_checkpoint", "latest"))
    assert strip_times(log_of(out)) == strip_times(log_of(reference_run))
    assert same_weights(out / "last_model", reference_run / "last_model")


def test_nonfinite_loss_is_skipped_or_stops_with_intact_checkpoint(tmp_path, monkeypatch):
    real_forward = CascadeLoss.forward
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        calls["n"] += 1
        loss = real_forward(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(CascadeLoss, "forward", sometimes_nan)
    stage1.run(tiny(tmp_path / "skip", "--epochs", "1"))
    record = log_of(tmp_path / "skip")[0]
    assert record["skipped_steps"] == 1 and record["train_loss"] == record["train_loss"]  # finite mean
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "skip" / "last_model").values())

    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 4"):
        stage1.run(tiny(tmp_path / "stop", "--on_nonfinite_loss", "stop", "--checkpointing_steps", "2"))
    ckpt = list_checkpoints(tmp_path / "stop")[-1]
    assert json.loads((ckpt / "cadel_checkpoint.json").read_text())["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())


def test_resume_refuses_a_checkpoint_of_another_model(reference_run, tmp_path):
    ckpt = list_checkpoints(reference_run)[-1]
    with pytest.raises(ValueError, match="backbone=test_resnet but this run has backbone=resnet18"):
        stage1.run(tiny(tmp_path / "other", "--backbone", "resnet18", "--resume_from_checkpoint", str(ckpt)))


def test_two_processes_train_and_only_main_writes(tmp_path):
    out = tmp_path / "ddp"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "train_stage1.py"] + TINY + \
        ["--output_dir", str(out), "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["num_processes"] == 2
    assert [r["epoch"] for r in log_of(out)] == [1]  # one writer: no duplicated records
    assert (out / "best_model" / "model.safetensors").exists()
