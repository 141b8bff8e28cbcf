"""Real launches: signals sent to ``accelerate launch`` (one and two processes) reach every trainer, which
checkpoints and stops, and none outlives its launcher; two "machines" on one host train, resume and evaluate to
the same numbers as two processes on one machine, through the multi-node template of ``accelerate_configs/``."""
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from cadel_modeling.training.checkpointing import list_checkpoints, verify

from conftest import REPO, requires_fashion_mnist

pytestmark = [pytest.mark.slow, requires_fashion_mnist]

TINY = ["--config", "fashion_mnist_lt", "--backbone", "test_resnet", "--n_max", "60", "--imb_factor", "10",
        "--val_per_class", "10", "--batch_size", "16", "--eval_batch_size", "100", "--lr", "0.05", "--log_every", "0",
        "--num_workers", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "60"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(processes: int, port: int):
    if processes == 1:
        return ["accelerate", "launch", "--config_file", "accelerate_configs/cpu.yaml", "--num_cpu_threads_per_process",
                "1"]
    return ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def trainers_of(pid: int) -> list:
    return [p for p in psutil.Process(pid).children(recursive=True) if "train_stage1.py" in " ".join(p.cmdline())]


@pytest.mark.parametrize("processes, sig", [(1, signal.SIGTERM), (2, signal.SIGTERM), (1, signal.SIGKILL),
                                            (2, signal.SIGINT)])
def test_a_signal_to_the_launcher_checkpoints_every_trainer_and_none_survives(tmp_path, processes, sig):
    out = tmp_path / "run"
    cmd = launcher(processes, free_port()) + ["train_stage1.py", *TINY, "--epochs", "200", "--output_dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (out / "train_log.jsonl").exists() or proc.poll() is not None, 300, "the first epoch")
    assert proc.poll() is None, proc.stdout.read()
    trainers = trainers_of(proc.pid)
    assert len(trainers) == processes
    proc.send_signal(sig)  # what a scheduler, a wrapper's Ctrl-C, or an OOM killer does to the launcher
    output, _ = proc.communicate(timeout=300)  # EOF once every trainer has closed the shared pipe
    wait_for(lambda: not any(t.is_running() and t.status() != psutil.STATUS_ZOMBIE for t in trainers), 120,
             "the trainers to exit")
    assert proc.returncode != 0  # a scheduler sees a failure and requeues (docs/reliability.md lists the codes)
    # cadel's own record, not the launcher's stdout: whether a launcher still relays its trainers' output after it
    # was killed is its business (accelerate 1.15 did, 1.16 does not). The trainer logs the stop, with the
    # checkpoint it wrote and the resume command, to the run's train.log.
    train_log = (out / "train.log").read_text()
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    stops = re.findall(rf"stopped by {name} at epoch (\d+) step (\d+); checkpoint (\S+) saved\. Resume with: "
                       r".*--resume_from_checkpoint latest", train_log)
    assert len(stops) == 1, train_log[-3000:]
    epoch, step_in_epoch, path = int(stops[0][0]), int(stops[0][1]), Path(stops[0][2])
    assert path == list_checkpoints(out)[-1]  # the newest checkpoint is the one written on the signal
    meta = verify(path)  # complete, readable, only data files
    # every trainer took part in it: one random-generator state per process, at the step the stop names
    assert meta["num_processes"] == processes
    assert sorted(p.name for p in path.glob("rng_state_*.json")) == [f"rng_state_{i}.json" for i in range(processes)]
    assert (meta["epoch"], meta["step_in_epoch"]) == (epoch, step_in_epoch)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert meta["epoch"] > log[-1]["epoch"]  # written after the last finished epoch, not by its end-of-epoch save


def run_logged(cmds, timeout=600):
    procs = [subprocess.Popen(c, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, o in zip(procs, outputs):
        assert p.returncode == 0, o[-3000:]
    return outputs


def two_machines(port: int, *args):
    """The multi-node template for two one-process 'machines' on this host."""
    return [["accelerate", "launch", "--config_file", "accelerate_configs/multi_node_bf16.yaml", "--num_machines",
             "2", "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
             "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no", *args]
            for rank in (0, 1)]


def test_two_machines_on_one_host_match_two_processes_on_one_machine(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    # train one epoch, resume for a second, evaluate: both ways
    run_logged([launcher(2, free_port()) + ["train_stage1.py", *TINY, "--epochs", "1", "--output_dir", str(single)]])
    run_logged(two_machines(free_port(), "train_stage1.py", *TINY, "--epochs", "1", "--output_dir", str(multi)))
    for folder, cmds in ((single, [launcher(2, free_port())]), (multi, two_machines(free_port()))):
        resume = ["train_stage1.py", *TINY, "--epochs", "2", "--output_dir", str(folder), "--resume_from_checkpoint",
                  "latest"]
        run_logged([c + resume for c in cmds])
        run_logged([c + ["evaluate.py", "--eval_model", str(folder), "--eval_split", "val"] for c in cmds])
    info = json.loads((multi / "run_info.json").read_text())
    assert info["num_processes"] == 2
    logs = [[{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"}
             for line in (f / "train_log.jsonl").read_text().splitlines()] for f in (single, multi)]
    assert logs[0] == logs[1] and [r["epoch"] for r in logs[0]] == [1, 2]
    a, b = (load_file(str(f / "last_model" / "model.safetensors")) for f in (single, multi))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = [json.loads((f / "best_model" / "eval_val" / "results.json").read_text()) for f in (single, multi)]
    assert results[0]["results"] == results[1]["results"]
