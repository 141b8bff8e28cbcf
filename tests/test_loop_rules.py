"""The epoch loop's rules on a tiny model, with scripted loss values so every number is known by hand: gradient
accumulation, skipping a non-finite step (and stopping on it or on a streak of them), checkpoints every N steps,
resuming mid-epoch, T past the schedule, mixup and channels-last inputs, the per-step seed and the late flags."""
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from cadel_modeling.config import RunConfig
from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.training import loop
from cadel_modeling.training.accelerator import make_accelerator
from cadel_modeling.training.checkpointing import TrainState
from cadel_modeling.training.losses import CascadeLoss, mixup_batch
from cadel_modeling.training.optim import LRSchedule, OptimizerSpec, build_optimizer

NAN = float("nan")


def tiny_model():
    torch.manual_seed(0)
    return CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=3, image_size=32,
                                                   aux_head="light", class_counts=[3, 2, 1]))


def make_batches(n, size=2):
    gen = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(size, 3, 32, 32, generator=gen), "labels": torch.arange(size) % 3,
             "index": torch.full((size,), i)} for i in range(n)]


class Scripted:
    """A loss whose value at the k-th call is ``values[k]`` (times-zero model output keeps it differentiable); records
    what the loop passed it."""

    def __init__(self, values):
        self.values, self.calls = list(values), []

    def __call__(self, exit_logits, y_a, y_b, lam, T):
        self.calls.append({"T": T, "lam": lam, "y_a": y_a, "y_b": y_b})
        value, z = self.values[len(self.calls) - 1], exit_logits[-1]
        if value == "overflow":  # a finite loss (0) whose gradient is infinite: d sqrt(u)/du at u = 0
            return (z - z.detach()).sqrt().sum()
        return z.sum() * 0 + value


def run(values, steps_per_epoch=None, state=None, loader=None, on_checkpoint=None, model=None, **settings):
    settings = {"epochs": 2, "mixup_alpha": 0.0, **settings}
    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light", **settings)
    model = model or tiny_model()
    optimizer = build_optimizer(model, OptimizerSpec.from_config(cfg))
    loss, records = Scripted(values), []
    state = state or TrainState()
    loader = loader if loader is not None else make_batches(len(values))
    accelerator = make_accelerator(gradient_accumulation_steps=cfg.grad_accum_steps)
    stats = loop.train_one_epoch(model, loader, optimizer, loss, accelerator, loop.LoopOptions.from_config(cfg), state,
                                 steps_per_epoch=steps_per_epoch or len(values) // cfg.grad_accum_steps,
                                 on_step=records.append, on_checkpoint=on_checkpoint)
    return SimpleNamespace(stats=stats, records=records, calls=loss.calls, state=state, optimizer=optimizer, cfg=cfg)


def test_loop_options_carry_every_run_setting():
    cfg = RunConfig(epochs=7, schedule_epochs=9, lr=0.2, seed=3, grad_accum_steps=2, mixup_alpha=0.4,
                    channels_last=True, on_nonfinite_loss="stop", max_skipped_steps=4, checkpointing_steps=5)
    assert loop.LoopOptions.from_config(cfg) == loop.LoopOptions(
        schedule=LRSchedule("cosine_epoch", 0.2, 9, 0.0, 5.0), epochs=7, seed=3, grad_accum_steps=2, mixup_alpha=0.4,
        channels_last=True, on_nonfinite_loss="stop", max_skipped_steps=4, checkpointing_steps=5)


def test_the_step_seed_is_exact():
    assert [loop.step_seed(*args) for args in [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1),
                                               (2, 3, 5, 1)]] == [0, 1_000_003, 7_919, 31, 1, 2_023_919]


def test_micro_batches_accumulate_into_one_step_with_their_mean_loss():
    r = run([1.0, 3.0, 5.0, 7.0], grad_accum_steps=2)
    assert [(x.global_step, x.step_in_epoch, x.loss, x.skipped) for x in r.records] == [(1, 0, 2.0, False),
                                                                                        (2, 1, 6.0, False)]
    assert [x.lr for x in r.records] == [0.025, 0.025] and [x.T for x in r.records] == [0.5, 0.5]
    assert r.stats["train_loss"] == 4.0 and r.stats["steps_taken"] == 2 and r.stats["images_per_process"] == [8]
    assert r.stats["T"] == 0.5 and r.stats["lr"] == 0.025 and r.stats["skipped_steps"] == 0
    assert (r.state.step_in_epoch, r.state.global_step, r.state.epoch_images) == (2, 2, 0)
    assert (r.state.epoch_loss_sum, r.state.epoch_loss_count) == (0.0, 0)
    assert all(c["lam"] == 1.0 and c["y_b"] is None for c in r.calls)           # mixup off
    assert len(r.records[0].mean_weights) == 3                                   # one per exit (2 aux + final)
    assert not hasattr(r.optimizer.optimizer if hasattr(r.optimizer, "optimizer") else r.optimizer, "found_inf")


def test_a_non_finite_step_is_skipped_counted_and_left_out_of_the_mean(caplog):
    with caplog.at_level(logging.WARNING, logger="cadel"):
        r = run([1.0, NAN, 3.0])
    assert [x.skipped for x in r.records] == [False, True, False]
    assert r.records[0].loss == 1.0 and math.isnan(r.records[1].loss) and r.records[2].loss == 3.0
    assert r.stats["train_loss"] == 2.0 and r.stats["steps_taken"] == 2 and r.stats["skipped_steps"] == 1
    assert (r.state.skipped_steps, r.state.consecutive_skipped) == (1, 0)
    assert [rec.getMessage() for rec in caplog.records] == [
        "non-finite loss at epoch 1, step 1 (global 2): step skipped, weights and BatchNorm statistics unchanged"]


def test_on_nonfinite_loss_stop_stops_at_the_first_one_with_the_fix():
    with pytest.raises(loop.NonFiniteLossError) as error:
        run([1.0, NAN, 3.0], on_nonfinite_loss="stop")
    assert str(error.value) == ("non-finite loss at epoch 1, step 1 (global 2); the step was skipped and the weights "
                                "are intact. Lower the lr or use --on_nonfinite_loss skip")
    assert error.value.exit_code == 3


def test_max_skipped_steps_in_a_row_stop_the_run_and_a_good_step_resets_the_streak():
    r = run([NAN, 1.0, NAN, 2.0], max_skipped_steps=2)
    assert (r.state.skipped_steps, r.state.consecutive_skipped) == (2, 0)
    state = TrainState()
    with pytest.raises(loop.NonFiniteLossError) as error:
        run([NAN, 1.0, NAN, NAN, 5.0], max_skipped_steps=2, state=state)
    assert str(error.value) == ("training diverged: 2 steps in a row had a non-finite loss (last at epoch 1, step 3 "
                                "(global 4)); lower the lr (--lr) or raise --max_skipped_steps")
    assert (state.skipped_steps, state.consecutive_skipped) == (3, 2)


def test_checkpoints_every_n_steps_see_the_running_loss_and_every_step_handled():
    seen = []
    holder = {}

    def on_checkpoint():
        s = holder["state"]
        seen.append((s.global_step, s.epoch_loss_sum, s.epoch_loss_count))

    holder["state"] = TrainState()
    r = run([1.0, 2.0, 3.0, 4.0, 5.0], checkpointing_steps=2, on_checkpoint=on_checkpoint, state=holder["state"])
    assert seen == [(2, 3.0, 2), (4, 10.0, 4)] and r.stats["train_loss"] == 3.0
    r = run([1.0, 2.0, 3.0], checkpointing_steps=None, on_checkpoint=lambda: pytest.fail("no checkpoint asked"))


def test_a_resumed_epoch_skips_the_batches_done_and_keeps_the_running_loss(monkeypatch):
    batches = make_batches(4)
    loader = DataLoader(batches, batch_size=1, collate_fn=lambda items: items[0])
    seen = []
    original = loop.mixup_batch
    monkeypatch.setattr(loop, "mixup_batch", lambda x, *args: seen.append(x) or original(x, *args))
    state = TrainState(epoch=1, step_in_epoch=2, global_step=2, epoch_loss_sum=10.0, epoch_loss_count=2)
    r = run([1.0, 3.0], steps_per_epoch=4, state=state, loader=loader)
    assert len(seen) == 2 and all(torch.equal(x, b["pixel_values"]) for x, b in zip(seen, batches[2:]))
    assert [(x.global_step, x.step_in_epoch) for x in r.records] == [(3, 2), (4, 3)]
    assert r.stats["train_loss"] == (10.0 + 1.0 + 3.0) / 4 and r.stats["steps_taken"] == 4   # the whole epoch


def test_an_epoch_ends_at_steps_per_epoch_and_past_the_schedule_trains_with_T_0():
    r = run([1.0, 2.0, 3.0, 4.0, 5.0], steps_per_epoch=3)
    assert len(r.calls) == 3 and r.state.global_step == 3
    r = run([1.0, 2.0], state=TrainState(epoch=3), epochs=4, schedule_epochs=2)
    assert [c["T"] for c in r.calls] == [0.0, 0.0] and r.stats["T"] == 0.0
    assert r.stats["lr"] == LRSchedule("cosine_epoch", 0.025, 2).at(3, 0, 2)


def test_mixup_draws_with_the_step_seed_and_channels_last_reaches_the_model():
    model = tiny_model()
    formats = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: formats.append(kwargs["pixel_values"].is_contiguous(memory_format=torch.channels_last)),
        with_kwargs=True)
    r = run([1.0, 2.0], mixup_alpha=0.4, seed=3, channels_last=True, model=model)
    batches = make_batches(2)
    for step, (call, batch) in enumerate(zip(r.calls, batches)):
        gen = torch.Generator().manual_seed(loop.step_seed(3, 0, step, 0))
        _, y_a, y_b, lam = mixup_batch(batch["pixel_values"], batch["labels"], 0.4, gen)
        assert call["lam"] == lam and 0 < lam < 1 and torch.equal(call["y_b"], y_b)
    assert formats == [True, True]
    assert run([1.0], channels_last=False, model=model) and formats[-1] is False


def test_the_device_skip_needs_an_optimizer_that_reads_found_inf_and_no_scaler():
    reads = SimpleNamespace(_step_supports_amp_scaling=True)
    assert loop.supports_device_skip(reads) is True
    assert loop.supports_device_skip(SimpleNamespace(optimizer=reads)) is True              # accelerate's wrapper
    assert loop.supports_device_skip(SimpleNamespace(optimizer=reads, scaler=object())) is False
    assert loop.supports_device_skip(SimpleNamespace()) is False


def test_flags_are_read_at_once_on_the_cpu_and_two_steps_late_on_an_accelerator():
    cpu = loop.StepFlags(torch.device("cpu"))
    assert (cpu.on_host, cpu.lag) == (True, 0)
    gpu = loop.StepFlags(torch.device("cuda"))
    assert (gpu.on_host, gpu.lag) == (False, 2)
    assert loop.StepFlags(torch.device("cpu"), lag=1).lag == 1
    flags = loop.StepFlags(torch.device("cpu"), lag=1)
    for step in (1, 2, 3):
        flags.push({"global_step": step}, torch.tensor([float(step)]))
    assert flags.due(2) == [({"global_step": 1}, [1.0])]
    assert flags.due(2) == []
    assert flags.drain() == [({"global_step": 2}, [2.0]), ({"global_step": 3}, [3.0])] and flags.drain() == []


def test_a_skipped_step_leaves_weights_buffers_and_optimizer_exactly_as_before():
    """Two epochs from the same start: one step, and that step plus a step whose loss is NaN. The states match:
    with the fused optimizer (skipped on the device), the same wrapped by accelerate (``found_inf`` goes to the
    optimizer inside), and a plain one that cannot read ``found_inf`` (the blocking fallback)."""
    accelerator = make_accelerator()
    gen = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(8, 3, 32, 32, generator=gen), "labels": torch.arange(8) % 4}
               for _ in range(2)]
    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light", epochs=2, mixup_alpha=0.0, lr=0.1)

    def run_steps(steps, nan_at=None, kind="fused"):
        torch.manual_seed(0)
        model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=4, image_size=32,
                                                        aux_head="light", class_counts=[4, 3, 2, 1]))
        optimizer = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if kind == "plain"
                     else build_optimizer(model, OptimizerSpec.from_config(cfg)))
        assert loop.supports_device_skip(optimizer) is (kind != "plain")
        if kind == "wrapped":
            optimizer = accelerator.prepare(optimizer)
        calls = {"n": 0}
        base = CascadeLoss()

        def loss_fn(*args, **kwargs):
            calls["n"] += 1
            loss = base(*args, **kwargs)
            return loss * float("nan") if calls["n"] == nan_at else loss

        state = TrainState()
        stats = loop.train_one_epoch(model, batches[:steps], optimizer, loss_fn, accelerator,
                                     loop.LoopOptions.from_config(cfg), state, steps_per_epoch=steps)
        return model.state_dict(), optimizer.state_dict()["state"], state, stats

    for kind in ("fused", "wrapped", "plain"):
        ref_model, ref_opt, _, ref_stats = run_steps(1, kind=kind)
        got_model, got_opt, state, stats = run_steps(2, nan_at=2, kind=kind)
        assert state.skipped_steps == 1 and stats["steps_taken"] == 1
        assert stats["train_loss"] == ref_stats["train_loss"]
        assert ref_model.keys() == got_model.keys() and any("running_mean" in k for k in ref_model)
        for name in ref_model:  # parameters and BatchNorm statistics (which the NaN forward pass had updated)
            assert torch.equal(ref_model[name], got_model[name]), name
        for index in ref_opt:
            assert all(torch.equal(ref_opt[index][k], got_opt[index][k]) for k in ref_opt[index]), index


def test_a_non_finite_micro_batch_skips_its_whole_step():
    r = run([NAN, 1.0, 2.0, 4.0], grad_accum_steps=2)
    assert [x.skipped for x in r.records] == [True, False] and r.stats["train_loss"] == 3.0


def test_a_finite_loss_whose_gradient_overflows_is_skipped_too():
    model = tiny_model()
    r = run([1.0, "overflow", 2.0], model=model)
    assert [x.skipped for x in r.records] == [False, True, False] and r.state.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_each_steps_record_carries_the_losss_mean_cascade_weight_per_exit():
    loss = Scripted([1.0, 2.0])
    loss.last_mean_weight = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    records, model = [], tiny_model()
    loop.train_one_epoch(model, make_batches(2), build_optimizer(model, OptimizerSpec()), loss,
                         make_accelerator(), loop.LoopOptions(schedule=LRSchedule("cosine_epoch", 0.1, 2), epochs=2),
                         TrainState(), steps_per_epoch=2, on_step=records.append)
    assert [x.mean_weights for x in records] == [[0.25, 0.5, 0.75]] * 2


def test_the_bar_counts_this_epochs_steps_from_where_it_resumes_and_prepare_batch_feeds_the_model(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.updates, self.closed = kwargs, 0, False
            bars.append(self)

        def update(self, n):
            self.updates += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(loop, "progress", lambda **kwargs: Bar(**kwargs))
    model = tiny_model()
    inputs = []
    model.register_forward_pre_hook(lambda m, args, kwargs: inputs.append(kwargs["pixel_values"]), with_kwargs=True)
    prepared = []

    def prepare_batch(batch):
        prepared.append(batch)
        return batch["pixel_values"] + 1
    batches = make_batches(4)
    loader = DataLoader(batches, batch_size=1, collate_fn=lambda items: items[0])
    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light", epochs=5, mixup_alpha=0.0)
    loop.train_one_epoch(model, loader, build_optimizer(model, OptimizerSpec.from_config(cfg)), Scripted([1.0, 2.0]),
                         make_accelerator(), loop.LoopOptions.from_config(cfg), TrainState(epoch=3, step_in_epoch=2),
                         steps_per_epoch=4, prepare_batch=prepare_batch)
    assert [(b.kwargs, b.updates, b.closed) for b in bars] == [
        ({"total": 4, "initial": 2, "desc": "epoch 3/5", "main": True}, 2, True)]
    assert [b["index"][0].item() for b in prepared] == [2, 3]
    assert all(torch.equal(x, b["pixel_values"] + 1) for x, b in zip(inputs, batches[2:])) and len(inputs) == 2


def test_a_stop_at_a_checkpoint_step_ends_the_epoch_keeping_its_running_loss():
    """The signal arrives during step 1, so step 2 carries it, and step 2 is a checkpointing step: the epoch ends
    there without that checkpoint (the stage writes the signal's own), returns its numbers and keeps the epoch's
    running loss for the resume."""
    from cadel_modeling.training.preemption import Preemption
    preemption = Preemption()
    checkpoints, state = [], TrainState()

    def on_checkpoint():
        checkpoints.append(state.global_step)

    class Signal(Scripted):
        def __call__(self, *args):
            if not self.calls:
                preemption.requested = True      # the handler ran during step 1's work
            return super().__call__(*args)

    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light", epochs=2, mixup_alpha=0.0,
                    checkpointing_steps=2)
    model = tiny_model()
    preemption.requested = False
    stats = loop.train_one_epoch(model, make_batches(4), build_optimizer(model, OptimizerSpec.from_config(cfg)),
                                 Signal([1.0, 2.0, 3.0, 4.0]), make_accelerator(), loop.LoopOptions.from_config(cfg),
                                 state, steps_per_epoch=4, preemption=preemption, on_checkpoint=on_checkpoint)
    assert checkpoints == [] and preemption.requested
    assert stats["steps_taken"] == 2 and stats["train_loss"] == 1.5
    assert (state.global_step, state.epoch_loss_sum, state.epoch_loss_count, state.epoch_images) == (2, 3.0, 2, 4)


def test_each_step_trains_with_its_own_warmup_learning_rate_and_the_epoch_reports_its_first():
    r = run([1.0, 2.0, 3.0, 4.0], scheduler="warmup_cosine", warmup_epochs=2, epochs=4)
    schedule = LRSchedule("warmup_cosine", 0.025, 4, 0.0, 2)
    assert [x.lr for x in r.records] == [schedule.at(1, step, 4) for step in range(4)]
    assert len({x.lr for x in r.records}) == 4 and r.stats["lr"] == schedule.at(1, 0, 4)


def test_one_step_has_its_own_loss_and_an_epoch_of_skipped_steps_has_none():
    assert run([3.0]).stats["train_loss"] == 3.0
    r = run([NAN, NAN])
    assert r.stats["steps_taken"] == 0 and math.isnan(r.stats["train_loss"])


def test_a_resumed_epoch_with_accumulation_skips_its_steps_micro_batches(monkeypatch):
    batches = make_batches(6)
    loader = DataLoader(batches, batch_size=1, collate_fn=lambda items: items[0])
    seen, original = [], loop.mixup_batch
    monkeypatch.setattr(loop, "mixup_batch", lambda x, *args: seen.append(x) or original(x, *args))
    r = run([1.0, 3.0, 5.0, 7.0], steps_per_epoch=3, grad_accum_steps=2, loader=loader,
            state=TrainState(epoch=1, step_in_epoch=1, global_step=1, epoch_loss_sum=2.0, epoch_loss_count=2))
    assert [(x.global_step, x.loss) for x in r.records] == [(2, 2.0), (3, 6.0)]
    assert len(seen) == 4 and all(torch.equal(x, b["pixel_values"]) for x, b in zip(seen, batches[2:]))
