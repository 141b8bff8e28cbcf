"""Checkpoint save/verify/resume decisions, on a tiny model in one process (fast: no training run, no subprocess).

The slow end-to-end versions (a killed run resumes to the same numbers, crafted pickles) are in test_reliability.py;
these pin each rule of ``training/checkpointing.py`` on its own, so that mutation testing can check them.
"""
import json
import logging
import random

import numpy as np
import pytest
import torch
from torch import nn

from cadel_modeling.run_layout import (
    CHECKPOINT_META,
    CHECKPOINT_MODEL_FILE,
    CHECKPOINT_OPTIMIZER_FILE,
    CHECKPOINT_STATE_FILE,
)
from cadel_modeling.training.checkpointing import (
    CheckpointError,
    TrainState,
    check_signature,
    checkpoint_root,
    expected_files,
    latest_valid,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    verify,
)
from cadel_modeling.utils.finite import NonFiniteTensorError


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator
    return Accelerator(cpu=True)


def tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()   # one step: momentum buffers and BatchNorm statistics are non-trivial
    optimizer.step()
    return model, optimizer


def save(accelerator, out, step, run_id="run-a", keep_last=10, model=None, optimizer=None, **state):
    if model is None:
        model, optimizer = tiny(step)
    state = TrainState(global_step=step, **state)
    return save_checkpoint(accelerator, model, optimizer, state, out, keep_last, {"run_id": run_id, "backbone": "b"})


def test_round_trip_restores_weights_buffers_optimizer_state_and_random_generators(accelerator, tmp_path):
    model, optimizer = tiny(1)
    state = TrainState(epoch=3, step_in_epoch=7, global_step=27, best_metric=0.625, best_epoch=2, skipped_steps=1,
                       consecutive_skipped=1, epoch_loss_sum=12.5, epoch_loss_count=7)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    path = save_checkpoint(accelerator, model, optimizer, state, tmp_path, 2, {"run_id": "r"})
    after_save = (random.random(), np.random.rand(), torch.rand(1).item())

    assert path == checkpoint_root(tmp_path) / "step_00000027"
    assert {p.name for p in path.iterdir()} == expected_files(1)
    meta = read_meta(path)
    assert (meta["epoch"], meta["step_in_epoch"], meta["global_step"], meta["num_processes"]) == (3, 7, 27, 1)
    assert meta["run_id"] == "r"

    other, other_opt = tiny(2)
    restored = TrainState()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    load_checkpoint(path, accelerator, other, other_opt, restored)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == after_save
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    saved_momentum = [s["momentum_buffer"] for s in optimizer.state_dict()["state"].values()]
    loaded_momentum = [s["momentum_buffer"] for s in other_opt.state_dict()["state"].values()]
    assert len(saved_momentum) == 6 and all(torch.equal(a, b) for a, b in zip(saved_momentum, loaded_momentum))
    assert restored == state


def test_random_generators_are_not_restored_when_the_process_count_changed(accelerator, tmp_path):
    path = save(accelerator, tmp_path, 4)
    meta = json.loads((path / CHECKPOINT_META).read_text())
    meta["num_processes"] = 2      # as if written by 2 processes: rng_state_1 would be expected too
    (path / CHECKPOINT_META).write_text(json.dumps(meta))
    (path / "rng_state_1.json").write_text((path / "rng_state_0.json").read_text())
    torch.manual_seed(123)
    expected = torch.rand(1).item()
    torch.manual_seed(123)
    model, optimizer = tiny(0)
    torch.manual_seed(123)
    load_checkpoint(path, accelerator, model, optimizer, TrainState())
    assert torch.rand(1).item() == expected


def test_scaler_state_round_trips(accelerator, tmp_path):
    class Scaler:
        def __init__(self, value):
            self.value = value

        def state_dict(self):
            return {"scale": self.value}

        def load_state_dict(self, state):
            self.value = state["scale"]

    model, optimizer = tiny(0)
    path = save_checkpoint(accelerator, model, optimizer, TrainState(global_step=1), tmp_path, 1, {}, Scaler(512.0))
    scaler = Scaler(1.0)
    load_checkpoint(path, accelerator, model, optimizer, TrainState(), scaler)
    assert scaler.value == 512.0


def test_keep_last_removes_the_oldest_checkpoints(accelerator, tmp_path):
    for step in (1, 2, 3, 4):
        save(accelerator, tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    save(accelerator, tmp_path, 5, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000005"]


def test_saving_the_same_step_again_replaces_it(accelerator, tmp_path):
    save(accelerator, tmp_path, 3, run_id="first")
    save(accelerator, tmp_path, 3, run_id="second")
    assert [read_meta(p)["run_id"] for p in list_checkpoints(tmp_path)] == ["second"]


@pytest.mark.parametrize("where", ["weight", "buffer", "optimizer"])
def test_a_non_finite_tensor_is_refused_and_nothing_is_written(accelerator, tmp_path, where):
    model, optimizer = tiny(0)
    with torch.no_grad():
        if where == "weight":
            model[0].weight[0, 0] = float("nan")
        elif where == "buffer":
            model[1].running_var[1] = float("inf")
        else:
            next(iter(optimizer.state.values()))["momentum_buffer"].view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteTensorError, match="refusing to save a checkpoint"):
        save(accelerator, tmp_path, 1, model=model, optimizer=optimizer)
    assert not checkpoint_root(tmp_path).exists()


def test_verify_accepts_exactly_the_expected_files(accelerator, tmp_path):
    path = save(accelerator, tmp_path, 1)
    assert verify(path)["run_id"] == "run-a"

    (path / "extra.pkl").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unexpected files \['extra.pkl'\]"):
        verify(path)
    (path / "extra.pkl").unlink()

    (path / CHECKPOINT_OPTIMIZER_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: \['optimizer.pt'\] missing"):
        verify(path)


@pytest.mark.parametrize("broken, message", [
    (CHECKPOINT_MODEL_FILE, r"corrupt \(SafetensorError: "), (CHECKPOINT_STATE_FILE, r"corrupt \(JSONDecodeError: "),
    (CHECKPOINT_META, r"corrupt \(cadel_checkpoint.json is not valid JSON\)")])
def test_verify_refuses_unreadable_files(accelerator, tmp_path, broken, message):
    path = save(accelerator, tmp_path, 1)
    (path / broken).write_bytes(b"\x00garbage{")
    with pytest.raises(CheckpointError, match=message):
        verify(path)


def test_verify_refuses_a_missing_folder_and_a_folder_without_metadata(accelerator, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        verify(tmp_path / "nowhere")
    path = save(accelerator, tmp_path, 1)
    (path / CHECKPOINT_META).unlink()
    with pytest.raises(CheckpointError, match="not a complete cadel checkpoint"):
        verify(path)


def test_expected_files_has_one_random_state_per_process():
    # spelled out: checkpoints written by earlier versions must still be found complete
    assert expected_files(2) == {"cadel_checkpoint.json", "model.safetensors", "optimizer.pt", "training_state.json",
                                 "rng_state_0.json", "rng_state_1.json"}


def test_list_checkpoints_is_sorted_by_step_and_ignores_temporary_folders_and_files(accelerator, tmp_path):
    for step in (10, 2):
        save(accelerator, tmp_path, step)
    (checkpoint_root(tmp_path) / ".tmp_step_00000011").mkdir()
    (checkpoint_root(tmp_path) / "step_00000012").write_text("not a folder")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000010"]
    assert list_checkpoints(tmp_path / "empty") == []


def test_latest_valid_falls_back_past_corrupt_and_foreign_checkpoints(accelerator, tmp_path, caplog):
    for step, run in ((1, "run-a"), (2, "run-a"), (3, "run-a"), (4, "run-b")):
        save(accelerator, tmp_path, step, run_id=run)
    (checkpoint_root(tmp_path) / "step_00000003" / CHECKPOINT_MODEL_FILE).write_bytes(b"broken")
    with caplog.at_level(logging.WARNING, logger="cadel"):
        assert latest_valid(tmp_path, "run-a")[0].name == "step_00000002"
    warnings = [r.getMessage() for r in caplog.records]
    assert "skipping step_00000004: it belongs to run run-b, not to this folder's run run-a" in warnings
    assert any(w.startswith("skipping step_00000003: checkpoint ") and "is corrupt" in w for w in warnings)
    assert latest_valid(tmp_path, "run-b")[0].name == "step_00000004"
    assert latest_valid(tmp_path, None)[0].name == "step_00000004"      # no run id: any valid one
    assert latest_valid(tmp_path, "run-c") is None
    assert latest_valid(tmp_path / "empty", "run-a") is None


def test_check_signature_names_the_first_difference_and_ignores_keys_the_checkpoint_lacks(accelerator, tmp_path):
    path = save(accelerator, tmp_path, 1)
    meta = read_meta(path)
    check_signature(path, meta, {"backbone": "b", "image_size": 32})          # image_size absent from this checkpoint
    with pytest.raises(CheckpointError, match="made with backbone=b but this run has backbone=resnet50"):
        check_signature(path, meta, {"backbone": "resnet50"})
    meta["class_counts"] = [5, 3, 2]
    with pytest.raises(CheckpointError, match="class_counts=3 classes, 10 images but this run has "
                                              "class_counts=2 classes, 9 images"):
        check_signature(path, meta, {"class_counts": [6, 3]})
    meta.update(class_names=["a", "b", "c"], exit_stages=[2, 3])
    with pytest.raises(CheckpointError, match=r"class_names=3 classes but this run has class_names=2 classes;"):
        check_signature(path, meta, {"class_names": ["a", "b"]})
    with pytest.raises(CheckpointError, match=r"exit_stages=\[2, 3\] but this run has exit_stages=\[3\];"):
        check_signature(path, meta, {"exit_stages": [3]})


def test_train_state_ignores_unknown_keys():
    state = TrainState()
    state.load_state_dict({"epoch": 4, "unknown": 1})
    assert state.epoch == 4 and not hasattr(state, "unknown")


def test_loading_into_a_different_model_fails_instead_of_loading_part_of_it(accelerator, tmp_path):
    path = save(accelerator, tmp_path, 1)
    torch.manual_seed(0)
    smaller = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_checkpoint(path, accelerator, smaller, torch.optim.SGD(smaller.parameters(), lr=0.1), TrainState())


class _RunsCode:
    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(MARKER),))


MARKER = ""


def test_an_optimizer_file_that_would_run_code_is_refused_without_running_it(accelerator, tmp_path):
    global MARKER
    path = save(accelerator, tmp_path, 1)
    MARKER = str(tmp_path / "code_ran")
    torch.save({"state": {}, "param_groups": [], "payload": _RunsCode()}, path / CHECKPOINT_OPTIMIZER_FILE)
    model, optimizer = tiny(0)
    with pytest.raises(CheckpointError, match=r"not a plain optimizer state dict \(UnpicklingError\); it was refused"):
        load_checkpoint(path, accelerator, model, optimizer, TrainState())
    assert not (tmp_path / "code_ran").exists()


class Scaler:
    """A mixed-precision scaler's checkpoint interface, recording what it is given."""

    def __init__(self, scale=8.0):
        self.scale, self.loaded = scale, []

    def state_dict(self):
        return {"scale": self.scale}

    def load_state_dict(self, state):
        self.loaded.append(state)


def test_scaler_state_round_trips_and_a_run_without_a_scaler_ignores_it(accelerator, tmp_path):
    saved_model, optimizer = tiny(0)
    with_scaler = save_checkpoint(accelerator, saved_model, optimizer, TrainState(global_step=1), tmp_path / "a", 1,
                                  {}, Scaler())
    without = save_checkpoint(accelerator, saved_model, optimizer, TrainState(global_step=2), tmp_path / "b", 1, {})
    scaler = Scaler(scale=1.0)
    load_checkpoint(with_scaler, accelerator, *tiny(5), TrainState(), scaler=scaler)
    assert scaler.loaded == [{"scale": 8.0}]
    load_checkpoint(without, accelerator, *tiny(5), TrainState(), scaler=scaler)  # nothing saved: left as it is
    assert scaler.loaded == [{"scale": 8.0}]
    for path, step in ((with_scaler, 1), (without, 2)):  # a run without a scaler: everything else restored
        model, optimizer = tiny(5)
        state = TrainState()
        load_checkpoint(path, accelerator, model, optimizer, state, scaler=None)
        assert state.global_step == step
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved_model.state_dict().values()))


def test_a_checkpoint_that_does_not_record_its_process_count_counts_as_one_process(accelerator, tmp_path):
    torch.manual_seed(3)
    path = save(accelerator, tmp_path, 1)
    expected = torch.rand(1).item()
    meta = json.loads((path / CHECKPOINT_META).read_text())
    del meta["num_processes"]
    (path / CHECKPOINT_META).write_text(json.dumps(meta))
    model, optimizer = tiny(0)
    torch.manual_seed(99)
    load_checkpoint(path, accelerator, model, optimizer, TrainState())
    assert torch.rand(1).item() == expected


def test_a_half_written_checkpoint_of_a_crashed_save_is_replaced(accelerator, tmp_path):
    stale = checkpoint_root(tmp_path) / ".tmp_step_00000001"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    path = save(accelerator, tmp_path, 1)
    assert not stale.exists() and verify(path)["global_step"] == 1
