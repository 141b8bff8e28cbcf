"""Progress every ``--log_every`` optimizer steps, as the HF ``Trainer`` logs it: one line in ``train.log`` and on the
console (epoch, step/total, loss, lr, img/s, ETA) and the same scalars to the trackers.

It reads the epoch loop's late step records (``loop.StepRecord``), so it adds no host sync of its own: the loss of
a step reaches the host a few steps later, when its copy has long finished.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, List, Optional

logger = logging.getLogger("cadel")


def format_duration(seconds: float) -> str:
    """'1:02:03' / '2:03' for an ETA."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class StepLogger:
    """``on_step`` of ``train_one_epoch``: every ``log_every`` steps (by global step) a line and tracker scalars,
    averaged over the steps since the last line; skipped steps count in the speed, not in the loss."""

    def __init__(self, accelerator, *, log_every: int, batch_size: int, epochs: int, steps_per_epoch: int,
                 start_step: int, skipped_steps: Callable[[], int], clock: Callable[[], float] = time.time):
        self.accelerator, self.log_every, self.batch_size = accelerator, log_every, batch_size
        self.epochs, self.total = epochs, epochs * steps_per_epoch
        self.skipped_steps, self.clock = skipped_steps, clock
        self.start = self.last = (clock(), start_step)
        self.losses: List[float] = []

    def __call__(self, record) -> None:
        if not record.skipped:
            self.losses.append(record.loss)
        if not self.log_every or record.global_step % self.log_every:
            return
        now, step = self.clock(), record.global_step
        rate = (step - self.last[1]) / max(now - self.last[0], 1e-9)          # steps/s over the window
        overall = (step - self.start[1]) / max(now - self.start[0], 1e-9)     # steps/s since this process started
        loss: Optional[float] = sum(self.losses) / len(self.losses) if self.losses else None
        values = {"train/lr": record.lr, "train/T": record.T,
                  "train/skipped_steps": self.skipped_steps(), "train/images_per_s": self.batch_size * rate,
                  **{f"train/cascade_weight_exit{k + 1}": w for k, w in enumerate(record.mean_weights)}}
        if loss is not None:
            values["train/loss"] = loss
        if self.accelerator.log_with:
            self.accelerator.log(values, step=step)
        eta = format_duration((self.total - step) / overall) if overall > 0 else "?"
        logger.info("epoch %d/%d step %d/%d loss %s lr %.5g %.1f img/s ETA %s", record.epoch, self.epochs, step,
                    self.total, "n/a (skipped)" if loss is None or math.isnan(loss) else f"{loss:.4f}", record.lr,
                    self.batch_size * rate, eta)
        self.last, self.losses = (now, step), []
