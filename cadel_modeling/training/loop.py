"""The stage-1 epoch loop, written once for every device accelerate supports, with no per-step host sync.

Every process takes the same decision about a non-finite loss and a stop signal (a lone skip or stop would hang
DDP), without the host waiting for the device each step:

- A step with a non-finite loss on any process is skipped *on the device*: one small all-reduce per optimizer step
  makes the flag global, the fused optimizer reads it as ``found_inf`` and leaves parameters and its state alone, and
  the buffers (BatchNorm running statistics, which the forward pass already updated) are put back from a copy taken
  before the step. Nothing non-finite reaches the weights.
- The host learns what happened later: each step's flags (skipped?, stop asked?, loss, mean cascade weight per exit)
  are copied to pinned host memory without blocking and read ``lag`` steps later (0 on CPU, where reading is free;
  2 on accelerators, by when the copy has long finished), at the same step on every process. Counting skipped steps,
  stopping for a signal or after ``max_skipped_steps`` skipped steps in a row, the progress bar and tracking all run
  on those late reads.

Optimizers that cannot read ``found_inf`` on the device fall back to one blocking read per step (logged once).
The learning rate is a function of (epoch, step) and every step's randomness a function of (seed, process, step),
so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from accelerate.utils import gather_object

from ..utils.logging import progress
from .checkpointing import TrainState
from .losses import annealing_T, mixup_batch
from .optim import LRSchedule, set_learning_rate
from .preemption import Preemption

logger = logging.getLogger("cadel")


class NonFiniteLossError(RuntimeError):
    """Training stopped on a non-finite loss (``on_nonfinite_loss stop`` or too many skipped steps in a row)."""

    exit_code = 3


@dataclass(frozen=True)
class LoopOptions:
    """What the epoch loop needs to know about the run; ``from_config`` reads it from a run config."""

    schedule: LRSchedule
    epochs: int
    seed: int = 0
    grad_accum_steps: int = 1
    mixup_alpha: float = 0.0
    channels_last: bool = False
    on_nonfinite_loss: str = "skip"
    max_skipped_steps: int = 10
    checkpointing_steps: Optional[int] = None

    @classmethod
    def from_config(cls, cfg) -> LoopOptions:
        return cls(schedule=LRSchedule.from_config(cfg), epochs=cfg.epochs, seed=cfg.seed,
                   grad_accum_steps=cfg.grad_accum_steps, mixup_alpha=cfg.mixup_alpha,
                   channels_last=cfg.channels_last, on_nonfinite_loss=cfg.on_nonfinite_loss,
                   max_skipped_steps=cfg.max_skipped_steps,
                   checkpointing_steps=cfg.checkpointing_steps)


def step_seed(seed: int, process_index: int, global_step: int, micro_batch: int) -> int:
    """All randomness of a step (mixup, dropout, drop path) as a function of (seed, process, step, micro-batch):
    per process as in the original, and a resumed run repeats the uninterrupted one exactly."""
    return seed * 1_000_003 + process_index * 7_919 + global_step * 31 + micro_batch


@dataclass
class StepRecord:
    """What the host learns about one optimizer step (all processes agree on it)."""

    epoch: int
    step_in_epoch: int
    global_step: int
    lr: float
    T: float                    # the share of the plain loss the step trained with (annealing_T, computed once)
    skipped: bool
    stop: bool
    loss: float                 # mean over processes of the step's loss (NaN when skipped)
    mean_weights: List[float]   # mean cascade weight per exit, averaged over processes


class StepFlags:
    """Per-step flags copied to the host without blocking, read ``lag`` steps later.

    ``push`` takes a small device tensor; ``due(step)`` returns the records of every step up to ``step - lag``,
    waiting (rarely, and never for the step just queued) for their copies. ``drain`` returns all of them.
    """

    def __init__(self, device: torch.device, lag: Optional[int] = None):
        self.on_host = device.type == "cpu"
        self.lag = (0 if self.on_host else 2) if lag is None else lag
        self.pending: deque = deque()

    def push(self, info: dict, flags: torch.Tensor) -> None:
        if self.on_host:
            self.pending.append((info, flags, None))
            return
        host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        event = torch.cuda.Event() if flags.device.type == "cuda" else None
        if event is not None:
            event.record()
        self.pending.append((info, host, event))

    def _pop(self) -> tuple:
        info, host, event = self.pending.popleft()
        if event is not None:
            event.synchronize()  # rarely waits: the copy was queued lag steps ago
        return info, read_host(host)

    def due(self, global_step: int) -> List[tuple]:
        out = []
        while self.pending and self.pending[0][0]["global_step"] <= global_step - self.lag:
            out.append(self._pop())
        return out

    def drain(self) -> List[tuple]:
        return [self._pop() for _ in range(len(self.pending))]


def read_host(values: torch.Tensor) -> List[float]:
    """The one place the loop turns tensors into numbers: a host copy, or (on CPU) the tensor itself."""
    return values.tolist()


def supports_device_skip(optimizer) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)
    return bool(getattr(inner, "_step_supports_amp_scaling", False)) and \
        getattr(optimizer, "scaler", None) is None


def train_one_epoch(model, loader, optimizer, loss_fn, accelerator, opts: LoopOptions, state: TrainState, *,
                    steps_per_epoch: int, preemption: Optional[Preemption] = None,
                    on_checkpoint: Optional[Callable[[], None]] = None,
                    on_step: Optional[Callable[[StepRecord], None]] = None,
                    prepare_batch: Optional[Callable[[dict], torch.Tensor]] = None
                    ) -> Dict[str, float]:
    """One epoch (or the rest of it when resuming). Returns the mean loss of the steps taken; stops early on a signal
    (``preemption.requested`` stays set). ``on_step`` receives each step's record (late, see ``StepFlags``).
    ``prepare_batch`` turns a batch into pixel values on the device (``--decode_on_gpu``)."""
    model.train()
    device = accelerator.device
    net = accelerator.unwrap_model(model)
    buffers = list(net.buffers())
    snapshot = [torch.empty_like(b) for b in buffers]
    inner = getattr(optimizer, "optimizer", optimizer)
    device_skip = supports_device_skip(optimizer)
    flags = StepFlags(device)
    mixup_gen = torch.Generator()
    T = annealing_T(min(state.epoch, opts.schedule.epochs), opts.schedule.epochs)  # held at 0 past the schedule
    accum = opts.grad_accum_steps
    loss_sum = torch.full((), state.epoch_loss_sum, device=device)
    taken = torch.full((), float(state.epoch_loss_count), device=device)
    step_bad = torch.zeros((), device=device)
    one = torch.ones((), device=device)
    step_loss = torch.zeros((), device=device)
    stop_asked = torch.zeros((), device=device)
    num_exits = len(net.aux_exits) + 1
    skip = state.step_in_epoch * accum
    batches = accelerator.skip_first_batches(loader, skip) if skip else loader
    bar = progress(total=steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch}/{opts.epochs}",
                   main=accelerator.is_local_main_process)
    stop = stop_raised = False

    def handle(info: dict, values: List[float]) -> None:
        nonlocal stop
        n = accelerator.num_processes
        record = StepRecord(epoch=info["epoch"], step_in_epoch=info["step_in_epoch"],
                            global_step=info["global_step"], lr=info["lr"], T=T, skipped=values[0] > 0,
                            stop=values[1] > 0, loss=values[2] / n if values[0] == 0 else math.nan,
                            mean_weights=[v / n for v in values[3:]])
        stop = stop or record.stop
        if record.skipped:
            state.skipped_steps += 1
            state.consecutive_skipped += 1
            where = f"epoch {record.epoch}, step {record.step_in_epoch} (global {record.global_step})"
            if opts.on_nonfinite_loss == "stop":
                raise NonFiniteLossError(f"non-finite loss at {where}; the step was skipped and the weights are "
                                         f"intact. Lower the lr or use --on_nonfinite_loss skip")
            logger.warning("non-finite loss at %s: step skipped, weights and BatchNorm statistics unchanged", where)
            if state.consecutive_skipped >= opts.max_skipped_steps:
                raise NonFiniteLossError(f"training diverged: {state.consecutive_skipped} steps in a row had a "
                                         f"non-finite loss (last at {where}); lower the lr (--lr) or raise "
                                         f"--max_skipped_steps")
        else:
            state.consecutive_skipped = 0
        if on_step is not None:
            on_step(record)

    def catch_up(block: bool) -> None:
        for info, values in (flags.drain() if block else flags.due(state.global_step)):
            handle(info, values)

    def sync_running_loss():  # host copy only when a checkpoint is written, not every step
        catch_up(block=True)
        state.epoch_loss_sum, state.epoch_loss_count = loss_sum.item(), int(taken.item())

    for i, batch in enumerate(batches):
        catch_up(block=False)
        if stop or state.step_in_epoch >= steps_per_epoch:
            break
        micro = i % accum
        lr = opts.schedule.at(state.epoch, state.step_in_epoch, steps_per_epoch)
        set_learning_rate(optimizer, lr)
        seed = step_seed(opts.seed, accelerator.process_index, state.global_step, micro)
        torch.manual_seed(seed)
        mixup_gen.manual_seed(seed)
        if micro == 0:
            if buffers:  # a ViT has none (LayerNorm keeps no running statistics); _foreach_copy_ refuses empty lists
                torch._foreach_copy_(snapshot, buffers)
            step_bad.zero_()
            step_loss.zero_()
        x = prepare_batch(batch) if prepare_batch is not None else batch["pixel_values"]
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x, y_a, y_b, lam = mixup_batch(x, batch["labels"], opts.mixup_alpha, mixup_gen)
        state.epoch_images += x.shape[0]  # a host integer: no device read
        if preemption is not None and preemption.requested and not stop_raised:
            stop_asked.fill_(1.0)  # a device write only when the signal arrives, not a read every step
            stop_raised = True
        with accelerator.accumulate(model):
            exit_logits = model(pixel_values=x).exit_logits
            loss = loss_fn(exit_logits, y_a, y_b, lam, T)
            detached = loss.detach()
            bad = (~torch.isfinite(detached)).float()
            step_bad += bad
            step_loss += torch.where(bad > 0, torch.zeros_like(detached), detached)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grads = [p.grad for p in net.parameters() if p.grad is not None]
                if grads:  # a finite loss can still overflow in backward: such a step is skipped as well
                    torch._amp_foreach_non_finite_check_and_unscale_(grads, step_bad, one)
                weights = getattr(loss_fn, "last_mean_weight", None)
                weights = weights.float() if weights is not None else torch.zeros(num_exits, device=device)
                local = torch.cat([torch.stack([step_bad, stop_asked, step_loss / accum]), weights.to(device)])
                shared = accelerator.reduce(local, reduction="sum")  # one small all-reduce per optimizer step
                skipped = shared[0] > 0
                if device_skip:
                    inner.found_inf, inner.grad_scale = skipped.float(), None
                    optimizer.step()
                elif not bool(skipped):  # blocking fallback: this optimizer cannot skip on the device
                    optimizer.step()
                for b, s in zip(buffers, snapshot):  # a skipped step leaves the buffers as before it, too
                    torch.where(skipped, s, b, out=b)
                loss_sum += torch.where(skipped, torch.zeros_like(step_loss), step_loss)
                taken += (~skipped).float() * accum
                flags.push({"epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                            "global_step": state.global_step + 1, "lr": lr}, shared)
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            if opts.checkpointing_steps and state.global_step % opts.checkpointing_steps == 0 and on_checkpoint:
                sync_running_loss()
                if stop:
                    break
                on_checkpoint()
    catch_up(block=True)
    if hasattr(inner, "found_inf"):
        del inner.found_inf
    bar.close()
    if stop and preemption is not None:
        preemption.requested = True
    steps_taken = accelerator.reduce(taken, reduction="mean").item() / accum  # taken counts micro-batches
    mean = accelerator.reduce(loss_sum / taken.clamp(min=1), reduction="mean").item() if steps_taken else math.nan
    images = gather_object([state.epoch_images])
    if stop:
        state.epoch_loss_sum, state.epoch_loss_count = loss_sum.item(), int(taken.item())
    else:
        state.epoch_loss_sum, state.epoch_loss_count, state.epoch_images = 0.0, 0, 0
    return {"train_loss": mean, "steps_taken": int(steps_taken), "T": T, "skipped_steps": state.skipped_steps,
            "lr": opts.schedule.at(state.epoch, 0, steps_per_epoch), "images_per_process": images}

