"""The stage-1 epoch loop, written once for every device accelerate supports.

The learning rate is a function of (epoch, step) and every step's randomness a function of (seed, process, step),
so a resumed run repeats the uninterrupted one exactly. All processes take the same decision about a non-finite
loss and a stop signal (a lone skip or stop would hang DDP).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from tqdm.auto import tqdm

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
    log_every: int = 0
    checkpointing_steps: Optional[int] = None

    @classmethod
    def from_config(cls, cfg) -> LoopOptions:
        return cls(schedule=LRSchedule.from_config(cfg), epochs=cfg.epochs, seed=cfg.seed,
                   grad_accum_steps=cfg.grad_accum_steps, mixup_alpha=cfg.mixup_alpha,
                   channels_last=cfg.channels_last, on_nonfinite_loss=cfg.on_nonfinite_loss,
                   max_skipped_steps=cfg.max_skipped_steps, log_every=cfg.log_every,
                   checkpointing_steps=cfg.checkpointing_steps)


def step_seed(seed: int, process_index: int, global_step: int, micro_batch: int) -> int:
    """All randomness of a step (mixup, dropout, drop path) as a function of (seed, process, step, micro-batch):
    per process as in the original, and a resumed run repeats the uninterrupted one exactly."""
    return seed * 1_000_003 + process_index * 7_919 + global_step * 31 + micro_batch


def train_one_epoch(model, loader, optimizer, loss_fn, accelerator, opts: LoopOptions, state: TrainState, *,
                    steps_per_epoch: int, preemption: Optional[Preemption] = None,
                    on_checkpoint: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """One epoch (or the rest of it when resuming). Returns the mean loss; stops early on preemption."""
    model.train()
    mixup_gen = torch.Generator()
    T = annealing_T(state.epoch, opts.epochs)
    loss_sum = torch.full((), state.epoch_loss_sum, device=accelerator.device)
    n_done = state.epoch_loss_count

    def sync_running_loss():  # host copy only when a checkpoint is written, not every step
        state.epoch_loss_sum, state.epoch_loss_count = loss_sum.item(), n_done
    skip = state.step_in_epoch * opts.grad_accum_steps
    batches = accelerator.skip_first_batches(loader, skip) if skip else loader
    bar = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch}/{opts.epochs}",
               disable=not accelerator.is_local_main_process, leave=False)
    stop = False
    for i, batch in enumerate(batches):
        if state.step_in_epoch >= steps_per_epoch:
            break
        set_learning_rate(optimizer, opts.schedule.at(state.epoch, state.step_in_epoch, steps_per_epoch))
        seed = step_seed(opts.seed, accelerator.process_index, state.global_step, i % opts.grad_accum_steps)
        torch.manual_seed(seed)
        mixup_gen.manual_seed(seed)
        x = batch["pixel_values"]
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x, y_a, y_b, lam = mixup_batch(x, batch["labels"], opts.mixup_alpha, mixup_gen)
        with accelerator.accumulate(model):
            exit_logits = model(pixel_values=x).exit_logits
            loss = loss_fn(exit_logits, y_a, y_b, lam, T)
            # One small collective per step, so every process takes the same decision (a lone skip or stop would
            # hang DDP): is the loss finite everywhere, and has any process been asked to stop?
            flags = torch.tensor([float(torch.isfinite(loss.detach())),
                                  float(preemption is not None and preemption.requested)], device=loss.device)
            flags = accelerator.gather(flags.reshape(1, 2))
            finite, stop = bool(flags[:, 0].all()), bool(flags[:, 1].any())
            if finite:
                accelerator.backward(loss)
                optimizer.step()
                loss_sum += loss.detach()
                n_done += 1
            else:
                msg = f"non-finite loss at epoch {state.epoch}, step {state.step_in_epoch} (global {state.global_step})"
                if opts.on_nonfinite_loss == "stop":
                    raise NonFiniteLossError(msg + "; the last checkpoint is intact. Lower the lr or use "
                                             "--on_nonfinite_loss skip")
                logger.warning(msg + ": step skipped, weights unchanged")
                state.skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            if opts.log_every and state.global_step % opts.log_every == 0:
                bar.set_postfix(loss=f"{(loss_sum / max(n_done, 1)).item():.4f}")
            if stop:
                if preemption is not None:
                    preemption.requested = True
                sync_running_loss()
                break
            if opts.checkpointing_steps and state.global_step % opts.checkpointing_steps == 0 and on_checkpoint:
                sync_running_loss()
                on_checkpoint()
    bar.close()
    mean = accelerator.reduce(loss_sum / max(n_done, 1), reduction="mean").item()
    if not (preemption is not None and preemption.requested):
        state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
    return {"train_loss": mean, "lr": opts.schedule.at(state.epoch, 0, steps_per_epoch), "T": T,
            "skipped_steps": state.skipped_steps}
