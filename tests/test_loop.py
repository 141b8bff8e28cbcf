"""The training loop reads nothing from the device on the host per step: its flags come back ``lag`` steps late,
and every other host read happens once per epoch, however many steps the epoch has."""
import functools
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from cadel_modeling.config import RunConfig
from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.training import loop
from cadel_modeling.training.accelerator import make_accelerator
from cadel_modeling.training.checkpointing import TrainState
from cadel_modeling.training.losses import CascadeLoss
from cadel_modeling.training.optim import OptimizerSpec, build_optimizer
from cadel_modeling.training.step_log import StepLogger

real_flags = loop.StepFlags
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
         torch.Tensor.__index__, torch.Tensor.numpy}


class CountHostReads(TorchFunctionMode):
    """Counts every tensor-to-Python read, apart from the loop's own late flag reads (``reading`` set)."""

    def __init__(self):
        super().__init__()
        self.reads, self.reading = 0, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS and not self.reading:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def run_epoch(steps: int, monkeypatch, lag: int = 2, log_every: int = 0):
    accelerator = make_accelerator()
    gen = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(4, 3, 32, 32, generator=gen), "labels": torch.arange(4) % 3}
               for _ in range(steps)]
    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light", epochs=2, mixup_alpha=0.0)
    torch.manual_seed(0)
    model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=3, image_size=32,
                                                    aux_head="light", class_counts=[3, 2, 1]))
    optimizer = build_optimizer(model, OptimizerSpec.from_config(cfg))
    mode = CountHostReads()
    flag_reads = []
    state = TrainState()
    real_read = loop.read_host

    def counted_read(values):
        flag_reads.append(state.global_step)  # when (in completed steps) a step's flags are read
        mode.reading = True
        try:
            return real_read(values)
        finally:
            mode.reading = False

    monkeypatch.setattr(loop, "read_host", counted_read)
    monkeypatch.setattr(loop, "StepFlags", functools.partial(real_flags, lag=lag))  # a GPU's lag, on the CPU
    records = []
    lines = StepLogger(accelerator, log_every=log_every, batch_size=4, epochs=2, steps_per_epoch=steps, start_step=0,
                       skipped_steps=lambda: state.skipped_steps)

    def on_step(record):
        records.append(record)
        lines(record)
    with mode:
        loop.train_one_epoch(model, batches, optimizer, CascadeLoss(), accelerator, loop.LoopOptions.from_config(cfg),
                             state, steps_per_epoch=steps, on_step=on_step)
    return mode.reads, flag_reads, records


def test_no_host_read_per_step_and_flags_read_lag_steps_late(monkeypatch):
    reads_4, flags_4, records_4 = run_epoch(4, monkeypatch)
    reads_9, flags_9, records_9 = run_epoch(9, monkeypatch)
    assert reads_4 == reads_9 <= 4  # once per epoch (the epoch's mean loss), not once per step
    assert [r.global_step for r in records_9] == list(range(1, 10))  # every step's record arrives, in order
    # while training, step k's flags are read when step k + 2 has been queued; the last two at the epoch's end
    assert flags_9 == [3, 4, 5, 6, 7, 8, 9, 9, 9]
    assert all(r.loss == r.loss and not r.skipped for r in records_9) and len(records_9[0].mean_weights) == 3


def test_step_lines_add_no_host_read(monkeypatch, caplog):
    with caplog.at_level("INFO", logger="cadel"):
        reads, _, _ = run_epoch(6, monkeypatch, log_every=1)
    assert reads == run_epoch(6, monkeypatch)[0]  # a line every step, still no per-step read
    lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert [line.split(" loss")[0] for line in lines] == [f"epoch 1/2 step {k}/12" for k in range(1, 7)]


def test_step_lines_and_tracker_scalars_every_log_every_steps(caplog):
    from cadel_modeling.training.loop import StepRecord
    from cadel_modeling.training.losses import annealing_T
    logged = []
    accelerator = SimpleNamespace(log_with=["tensorboard"], log=lambda values, step: logged.append((step, values)))
    clock = iter([100.0, 102.0, 103.0]).__next__  # at the start, then at each line
    logger = StepLogger(accelerator, log_every=2, batch_size=8, epochs=2, steps_per_epoch=3, start_step=0,
                        skipped_steps=lambda: 1, clock=clock)
    losses = {1: 1.0, 2: 3.0, 3: float("nan"), 4: 5.0}  # step 3 skipped (non-finite)
    with caplog.at_level("INFO", logger="cadel"):
        for step, loss in losses.items():
            logger(StepRecord(epoch=1 + (step > 3), step_in_epoch=(step - 1) % 3, global_step=step, lr=0.1,
                              T=annealing_T(1 + (step > 3), 2), skipped=step == 3, stop=False, loss=loss,
                              mean_weights=[1.0, 2.0]))
    # step 2: 2 steps in 2 s = 8 img/s, ETA 4 steps at 1 step/s; step 4: 2 steps in 1 s, 4 steps in 3 s overall
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 1/2 step 2/6 loss 2.0000 lr 0.1 8.0 img/s ETA 0:04",
        "epoch 2/2 step 4/6 loss 5.0000 lr 0.1 16.0 img/s ETA 0:02"]
    assert logged == [
        (2, {"train/lr": 0.1, "train/T": annealing_T(1, 2), "train/skipped_steps": 1, "train/images_per_s": 8.0,
             "train/cascade_weight_exit1": 1.0, "train/cascade_weight_exit2": 2.0, "train/loss": 2.0}),
        (4, {"train/lr": 0.1, "train/T": annealing_T(2, 2), "train/skipped_steps": 1, "train/images_per_s": 16.0,
             "train/cascade_weight_exit1": 1.0, "train/cascade_weight_exit2": 2.0, "train/loss": 5.0})]


@pytest.mark.parametrize("forced, tty, shown", [(None, True, True), (None, False, False), ("1", False, True),
                                                ("0", True, False)])
def test_bars_on_a_terminal_lines_elsewhere_and_cadel_progress_decides(monkeypatch, forced, tty, shown):
    import sys

    from cadel_modeling.utils.logging import bars_shown
    if forced is None:
        monkeypatch.delenv("CADEL_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("CADEL_PROGRESS", forced)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    assert bars_shown() is shown


def test_cpu_runs_read_at_once_so_a_signal_stops_at_the_step_it_interrupted(monkeypatch):
    _, flags, _ = run_epoch(4, monkeypatch, lag=0)
    assert flags == [1, 2, 3, 4]


@pytest.mark.parametrize("lag", [0, 2])
def test_the_lag_changes_nothing_in_the_numbers(monkeypatch, lag):
    a = run_epoch(5, monkeypatch, lag=0)[2]
    b = run_epoch(5, monkeypatch, lag=lag)[2]
    assert [r.loss for r in a] == [r.loss for r in b]
