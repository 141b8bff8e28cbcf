"""The training loop reads nothing from the device on the host per step: its flags come back ``lag`` steps late,
and every other host read happens once per epoch, however many steps the epoch has."""
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


def run_epoch(steps: int, monkeypatch, lag: int = 2):
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
    records = []
    with mode:
        loop.train_one_epoch(model, batches, optimizer, CascadeLoss(), accelerator, loop.LoopOptions.from_config(cfg),
                             state, steps_per_epoch=steps, lag=lag, on_step=records.append)
    return mode.reads, flag_reads, records


def test_no_host_read_per_step_and_flags_read_lag_steps_late(monkeypatch):
    reads_4, flags_4, records_4 = run_epoch(4, monkeypatch)
    reads_9, flags_9, records_9 = run_epoch(9, monkeypatch)
    assert reads_4 == reads_9 <= 4  # once per epoch (the epoch's mean loss), not once per step
    assert [r.global_step for r in records_9] == list(range(1, 10))  # every step's record arrives, in order
    # while training, step k's flags are read when step k + 2 has been queued; the last two at the epoch's end
    assert flags_9 == [3, 4, 5, 6, 7, 8, 9, 9, 9]
    assert all(r.loss == r.loss and not r.skipped for r in records_9) and len(records_9[0].mean_weights) == 3


def test_cpu_runs_read_at_once_so_a_signal_stops_at_the_step_it_interrupted(monkeypatch):
    _, flags, _ = run_epoch(4, monkeypatch, lag=0)
    assert flags == [1, 2, 3, 4]


@pytest.mark.parametrize("lag", [0, 2])
def test_the_lag_changes_nothing_in_the_numbers(monkeypatch, lag):
    a = run_epoch(5, monkeypatch, lag=0)[2]
    b = run_epoch(5, monkeypatch, lag=lag)[2]
    assert [r.loss for r in a] == [r.loss for r in b]
