"""Resume after a real preemption signal, determinism, non-finite losses, mismatched checkpoints, two processes."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def test_gradient_accumulation_splits_the_global_batch_and_keeps_the_step_count(reference_run, tmp_path):
    out = tmp_path / "accum"
    stage1.run(tiny(out, "--grad_accum_steps", "2"))
    info = json.loads((out / "run_info.json").read_text())
    assert (info["global_batch_size"], info["batch_size_per_process"]) == (16, 8)
    steps = sum(info["class_counts"]) // 16
    assert [r["steps_taken"] for r in log_of(out)] == [r["steps_taken"] for r in log_of(reference_run)] == [steps] * 2
    assert [r["images_per_process"] for r in log_of(out)] == [[16 * steps]] * 2   # 2 micro-batches of 8 per step
    assert not same_weights(out / "last_model", reference_run / "last_model")   # BatchNorm saw 8-image batches


def test_bf16_mixed_precision_trains_on_the_cpu_and_saves_float32_weights(reference_run, tmp_path):
    out = tmp_path / "bf16"   # a process of its own: accelerate keeps one mixed-precision setting per process
    cmd = ["accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
           "--dynamo_backend", "no", "train_stage1.py"] + TINY + ["--output_dir", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["mixed_precision"] == "bf16"
    saved = weights(out / "last_model")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in saved.values() if t.is_floating_point())
    assert not same_weights(out / "last_model", reference_run / "last_model")   # autocast did change the numbers
    bf16_loss = [r["train_loss"] for r in log_of(out)]
    fp32_loss = [r["train_loss"] for r in log_of(reference_run)]
    # The same training to bf16 precision: epoch 1 within 5%, and bf16 learns as fp32 does. Later epochs drift
    # apart chaotically (measured: 6.4% at epoch 2 after an input change of 1e-7 in the decoder), so they are held
    # to 10% only.
    assert bf16_loss[0] == pytest.approx(fp32_loss[0], rel=0.05)
    assert bf16_loss[-1] < bf16_loss[0] and bf16_loss == pytest.approx(fp32_loss, rel=0.10)


def test_same_seed_gives_identical_runs(reference_run, tmp_path):
    stage1.run(tiny(tmp_path / "again"))
    assert strip_times(log_of(tmp_path / "again")) == strip_times(log_of(reference_run))
    assert same_weights(tmp_path / "again" / "last_model", reference_run / "last_model")


# Epoch 1 lasts seconds (about 2,000 images in steps of 16), so a signal sent once training has started lands
# inside it, before any periodic or end-of-epoch checkpoint exists: the one checkpoint there is the signal's own.
LONGER_EPOCH = ["--n_max", "500", "--epochs", "1"]


@pytest.fixture(scope="module")
def longer_reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref_longer") / "run"
    stage1.run(tiny(out, *LONGER_EPOCH))
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_killed_run_checkpoints_where_it_stopped_and_resumes_to_the_same_result(longer_reference_run, tmp_path,
                                                                                 sig):
    out = tmp_path / "killed"
    cmd = [sys.executable, "train_stage1.py"] + TINY + LONGER_EPOCH + ["--output_dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # the model summary is logged just before training
        if (out / "train.log").exists() and "parameters and MACs" in (out / "train.log").read_text():
            break
        time.sleep(0.05)
    time.sleep(0.5)  # a few steps into epoch 1
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stdout.read()
    proc.send_signal(sig)  # SIGTERM: what a preempting scheduler sends; SIGINT: Ctrl-C
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 75, output  # EX_TEMPFAIL: preempted, resume it
    assert "--resume_from_checkpoint latest" in output
    stopped = re.search(rf"stopped by {sig.name} at epoch (\d+) step (\d+)", output)
    assert stopped, output
    checkpoints = list_checkpoints(out)
    assert len(checkpoints) == 1 and not (out / "last_model").exists()  # no periodic checkpoint: it is the signal's
    saved = json.loads((checkpoints[0] / "cadel_checkpoint.json").read_text())
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, int(stopped.group(2))) and stopped.group(1) == "1"
    assert saved["global_step"] == saved["step_in_epoch"]  # 0 if the signal beat the first step: still the signal's

    stage1.run(tiny(out, *LONGER_EPOCH, "--resume_from_checkpoint", "latest"))
    assert strip_times(log_of(out)) == strip_times(log_of(longer_reference_run))
    assert same_weights(out / "last_model", longer_reference_run / "last_model")


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
    # --batch_size is the global batch: 16 = 2 processes x 8
    assert (info["num_processes"], info["global_batch_size"], info["batch_size_per_process"]) == (2, 16, 8)
    records = log_of(out)
    assert [r["epoch"] for r in records] == [1]  # one writer: no duplicated records
    # each process drew 8 images per step, one epoch of the training split between them (drop_last)
    steps = sum(info["class_counts"]) // 16
    assert records[0]["steps_taken"] == steps
    assert records[0]["images_per_process"] == [8 * steps, 8 * steps]
    # both replicas ended with the same weights and buffers, and they are the ones saved in last_model
    digests = json.loads((out / "stage1_summary.json").read_text())["replica_weight_digests"]
    saved = load_file(str(out / "last_model" / "model.safetensors"))
    expected = {"parameters": hashlib.sha256(), "buffers": hashlib.sha256()}
    for name, tensor in sorted(saved.items()):
        kind = "buffers" if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked") \
            else "parameters"
        expected[kind].update(name.encode())
        expected[kind].update(tensor.float().contiguous().numpy().tobytes())
    assert digests == {kind: [d.hexdigest()] * 2 for kind, d in expected.items()}


# ------------------------------------------------------------------------------------------------ Reliability II
def checksums(folder):
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args) -> int:
    """The stage-1 command in this process, as a user runs it (exit code, one-line errors)."""
    from cadel_modeling.train_stage1 import main
    return main(TINY + [str(a) for a in args])


def test_a_refused_resume_changes_no_file_and_stage2_reads_the_models_own_settings(reference_run, tmp_path):
    import shutil

    from cadel_modeling.cli import resolve_config
    from cadel_modeling.config import STAGE2
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = checksums(run)
    assert cli("--output_dir", run, "--resume_from_checkpoint", "latest", "--image_size", "48") == 2
    assert checksums(run) == before  # config.yaml, run_info.json, logs, models: byte-identical
    # whatever happens to config.yaml later, stage 2 evaluates with the settings saved with the model
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("image_size: 32", "image_size: 48"))
    assert resolve_config(STAGE2, ["--stage1_dir", str(run)], "")[0].image_size == 32


def test_overwrite_is_a_clean_start_and_latest_resumes_only_this_run(tmp_path, caplog):
    import shutil
    out = tmp_path / "run"
    stage1.run(tiny(out, "--epochs", "3"))
    (out / "stage2_logit_adjustment").mkdir()
    (out / "stage2_logit_adjustment" / "stage2_results.json").write_text("{}")
    old_run = json.loads((out / "run_info.json").read_text())["run_id"]
    old_checkpoint = tmp_path / "old_checkpoint"
    shutil.copytree(list_checkpoints(out)[-1], old_checkpoint)

    stage1.run(tiny(out, "--epochs", "1", "--overwrite_output_dir"))
    new_run = json.loads((out / "run_info.json").read_text())["run_id"]
    assert new_run != old_run and not (out / "stage2_logit_adjustment").exists()
    assert [r["epoch"] for r in log_of(out)] == [1]
    assert [json.loads((c / "cadel_checkpoint.json").read_text())["run_id"] for c in list_checkpoints(out)] == \
        [new_run]
    # a checkpoint of the old run, put back with a later step number, is not what 'latest' resumes
    shutil.copytree(old_checkpoint, out / "checkpoints" / "step_99999999")
    with caplog.at_level("WARNING"):
        stage1.run(tiny(out, "--epochs", "2", "--resume_from_checkpoint", "latest"))
    assert f"belongs to run {old_run}" in caplog.text
    assert [r["epoch"] for r in log_of(out)] == [1, 2]
    assert json.loads((out / "run_info.json").read_text())["run_id"] == new_run


def test_a_diverged_run_exits_nonzero_and_nothing_nonfinite_is_saved(tmp_path, capsys):
    out = tmp_path / "diverged"
    assert cli("--output_dir", out, "--lr", "1e6", "--epochs", "3", "--checkpointing_steps", "2") == 3
    err = capsys.readouterr().err
    # Which guard trips first depends on the float path (thread count): ten non-finite losses in a row, or a
    # checkpoint that would hold the overflowed weights and is refused. Both stop with exit 3 and name the last
    # good checkpoint.
    assert ("training diverged: 10 steps in a row" in err or "refusing to save a checkpoint" in err), err
    last_good = re.search(r"Last good checkpoint: (\S+?);", err).group(1)
    assert last_good == "none" or (tmp_path / "diverged" / "checkpoints") in Path(last_good).parents
    saved = list(out.rglob("*.safetensors"))
    for path in saved:
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values()), path
    for path in out.rglob("optimizer.pt"):
        state = torch.load(path, weights_only=True)["state"]
        assert all(torch.isfinite(v).all() for s in state.values() for v in s.values() if torch.is_tensor(v)), path


def test_resume_never_runs_code_from_a_checkpoint_folder(reference_run, tmp_path):
    import pickle
    import shutil
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    checkpoint = list_checkpoints(run)[-1]
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload()))
    assert cli("--output_dir", run, "--resume_from_checkpoint", checkpoint) == 2
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    (checkpoint / "optimizer.pt").write_bytes(pickle.dumps({"state": Payload()}))  # an expected file name
    assert cli("--output_dir", run, "--resume_from_checkpoint", checkpoint) == 2
    assert not marker.exists()


def test_a_crafted_cifar_batch_is_refused_without_running_it(tmp_path):
    import pickle

    from test_data_cifar import write_cifar10_pickles

    from cadel_modeling.config import RunConfig
    from cadel_modeling.data import build_datasets
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    write_cifar10_pickles(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(ValueError, match="test_batch is not a CIFAR python batch file .* refused without running it"):
        build_datasets(RunConfig(dataset="cifar10_lt", data_dir=str(tmp_path)))
    assert not marker.exists()


def test_a_corrupt_checkpoint_is_named_and_latest_falls_back(reference_run, tmp_path, caplog):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    older, newest = list_checkpoints(run)[-2:]
    (newest / "model.safetensors").write_bytes(b"not a safetensors file")
    with caplog.at_level("WARNING"):
        stage1.run(tiny(run, "--resume_from_checkpoint", "latest", "--epochs", "2"))
    assert f"skipping {newest.name}: checkpoint {newest} is corrupt" in caplog.text
    assert f"resuming from {older.name}" in caplog.text
