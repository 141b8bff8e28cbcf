"""The stage-1 training loop and the evaluation pass, written once for every device accelerate supports.

Everything goes through one ``accelerator.prepare``; predictions are gathered with ``gather_for_metrics`` so no
sample counts twice; the learning rate is a function of (epoch, step) and the loop position, best metric and
mixup generator live in ``TrainState``, so ``accelerator.save_state`` captures everything a resume needs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from .losses import CascadeLoss, annealing_T, mixup_batch
from .modeling import (
    CadelConfig,
    CadelForImageClassification,
    adjust_logits,
    combine_exits,
)
from .optim import scheduled_lr, set_learning_rate

logger = logging.getLogger(__name__)


def make_accelerator(**kwargs):
    """An ``Accelerator`` that also forms a process group on machines without GPUs.

    ``accelerate launch --multi_gpu --num_processes N`` on a CPU-only machine starts N processes but, unless told
    to use the CPU, accelerate gives each one a world of its own: N independent copies that would all train and
    write. Asking for the CPU in that case makes them one gloo group; a world of one with WORLD_SIZE > 1 is refused.
    """
    from accelerate import Accelerator
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    no_gpu = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    accelerator = Accelerator(cpu=launched and no_gpu, **kwargs)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if accelerator.num_processes != world:
        raise RuntimeError(f"launched with WORLD_SIZE={world} but accelerate formed a group of "
                           f"{accelerator.num_processes}; check the accelerate config (accelerate env)")
    return accelerator


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def predict(model, loader, accelerator, exits: Optional[Sequence[int]] = None, desc: str = "eval"
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exit logits ``[K, N, C]`` (float32, CPU) and labels ``[N]`` of a whole split, gathered over processes."""
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    logits, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        with accelerator.autocast():
            outs = net.exit_features(batch["pixel_values"], exits)
        stacked = torch.stack([o.float() for o in outs], dim=1)  # [B, K, C]: one gather for all exits
        stacked, y = accelerator.gather_for_metrics((stacked, batch["labels"]))
        logits.append(stacked.cpu())
        labels.append(y.cpu())
    net.train(was_training)
    return torch.cat(logits).transpose(0, 1).contiguous(), torch.cat(labels)


def selection_scores(exit_logits: torch.Tensor, model_config: CadelConfig) -> torch.Tensor:
    """Scores the original used to pick the best epoch: CNN raw last exit; ViT sum of exits with tau = 1."""
    if model_config.resolved_inference_rule == "sum":
        return adjust_logits(combine_exits(list(exit_logits), "sum"), model_config.class_counts, 1.0,
                             num_terms=exit_logits.shape[0])
    return exit_logits[-1]


# ------------------------------------------------------------------------------------------------ training state
@dataclass
class TrainState:
    """Loop position and best-so-far, saved with every checkpoint (``accelerator.register_for_checkpointing``)."""

    epoch: int = 1                 # 1-indexed epoch in progress (or next to start)
    step_in_epoch: int = 0         # optimizer steps already done in ``epoch``
    global_step: int = 0
    best_metric: float = -1.0
    best_epoch: int = 0
    skipped_steps: int = 0         # steps dropped for a non-finite loss
    epoch_loss_sum: float = 0.0    # running loss of the epoch in progress, so a resumed epoch logs the same mean
    epoch_loss_count: int = 0

    def state_dict(self):
        return asdict(self)

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v)


class Preemption:
    """Turns SIGTERM/SIGINT into a flag checked between steps, so a checkpoint is written before exiting."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NonFiniteLossError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_dir(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


CHECKPOINT_META = "cadel_checkpoint.json"


def checkpoint_signature(cfg, model_config) -> dict:
    """What a checkpoint must agree on with the run that resumes it."""
    return {"backbone": cfg.backbone, "dataset": cfg.dataset, "num_labels": model_config.num_labels,
            "class_counts": model_config.class_counts, "aux_head": cfg.aux_head, "image_size": cfg.image_size}


def check_checkpoint_signature(path: Path, expected: dict) -> None:
    meta_path = Path(path) / CHECKPOINT_META
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a cadel checkpoint ({CHECKPOINT_META} missing)")
    found = json.loads(meta_path.read_text())
    for key, value in expected.items():
        if found.get(key) != value:
            shown = (lambda v: f"{len(v)} classes, {sum(v)} images" if key == "class_counts" and v else v)
            raise ValueError(f"checkpoint {path} was made with {key}={shown(found.get(key))!s} but this run has "
                             f"{key}={shown(value)!s}; resume with the run's own settings (its config.yaml) "
                             f"or start a new --output_dir")


def save_checkpoint(accelerator, output_dir, state: TrainState, keep_last: int, signature: dict) -> Path:
    """``accelerator.save_state`` into a temporary folder renamed into place, so a crash never leaves a half
    checkpoint that ``latest`` would pick; older checkpoints beyond ``keep_last`` are removed."""
    root = checkpoint_dir(output_dir)
    name = f"step_{state.global_step:08d}"
    final, tmp = root / name, root / f".tmp_{name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / CHECKPOINT_META, {**signature, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                                           "global_step": state.global_step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(output_dir) -> Optional[Path]:
    found = sorted(p for p in checkpoint_dir(output_dir).glob("step_*") if p.is_dir())
    return found[-1] if found else None


def resolve_resume(resume: Optional[str], output_dir) -> Optional[Path]:
    if not resume:
        return None
    path = latest_checkpoint(output_dir) if resume == "latest" else Path(resume)
    if resume == "latest" and path is None:
        return None  # nothing saved yet: a fresh start, so 'latest' is safe in a restart loop
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint={resume!r}: no checkpoint folder at {path}")
    return path


# ------------------------------------------------------------------------------------------------ the loop
def train_one_epoch(model, loader, optimizer, loss_fn: CascadeLoss, accelerator, cfg, state: TrainState,
                    steps_per_epoch: int, preemption: Optional[Preemption] = None,
                    on_checkpoint=None) -> Dict[str, float]:
    """One epoch (or the rest of it when resuming). Returns the mean loss; stops early on preemption."""
    model.train()
    mixup_gen = torch.Generator()
    T = annealing_T(state.epoch, cfg.epochs)
    loss_sum = torch.full((), state.epoch_loss_sum, device=accelerator.device)
    n_done = state.epoch_loss_count

    def sync_running_loss():  # host copy only when a checkpoint is written, not every step
        state.epoch_loss_sum, state.epoch_loss_count = loss_sum.item(), n_done
    skip = state.step_in_epoch * cfg.grad_accum_steps
    batches = accelerator.skip_first_batches(loader, skip) if skip else loader
    bar = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch}/{cfg.epochs}",
               disable=not accelerator.is_local_main_process, leave=False)
    for i, batch in enumerate(batches):
        if state.step_in_epoch >= steps_per_epoch:
            break
        set_learning_rate(optimizer, scheduled_lr(cfg, state.epoch, state.step_in_epoch, steps_per_epoch))
        # All randomness of a step (mixup, dropout, drop path) is a function of (seed, process, step, micro-batch):
        # per process as in the original, and a resumed run repeats the uninterrupted one exactly.
        step_seed = (cfg.seed * 1_000_003 + accelerator.process_index * 7_919 + state.global_step * 31
                     + i % cfg.grad_accum_steps)
        torch.manual_seed(step_seed)
        mixup_gen.manual_seed(step_seed)
        x = batch["pixel_values"]
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x, y_a, y_b, lam = mixup_batch(x, batch["labels"], cfg.mixup_alpha, mixup_gen)
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
                if cfg.on_nonfinite_loss == "stop":
                    raise NonFiniteLossError(msg + "; the last checkpoint is intact. Lower the lr or use "
                                             "--on_nonfinite_loss skip")
                logger.warning(msg + ": step skipped, weights unchanged")
                state.skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            if cfg.log_every and state.global_step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{(loss_sum / max(n_done, 1)).item():.4f}")
            if stop:
                if preemption is not None:
                    preemption.requested = True
                sync_running_loss()
                break
            if cfg.checkpointing_steps and state.global_step % cfg.checkpointing_steps == 0 and on_checkpoint:
                sync_running_loss()
                on_checkpoint()
    bar.close()
    mean = accelerator.reduce(loss_sum / max(n_done, 1), reduction="mean").item()
    if not (preemption is not None and preemption.requested):
        state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
    return {"train_loss": mean, "lr": scheduled_lr(cfg, state.epoch, 0, steps_per_epoch), "T": T,
            "skipped_steps": state.skipped_steps}


def save_model(net: CadelForImageClassification, path, cfg) -> None:
    """Weights + model config (tau, counts, labels) + the run config that made them, in one folder."""
    from .hub import RUN_CONFIG_NAME, save_image_processor
    net.save_pretrained(str(path))
    save_image_processor(path, net.config, cfg.augmentation)  # so pipeline("image-classification") works
    cfg.save(Path(path) / RUN_CONFIG_NAME)


def write_json(path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
    os.replace(tmp, path)


def append_jsonl(path, obj) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(obj) + "\n")


def truncate_log(path, before_epoch: int) -> None:
    """Drop log records of epochs a resumed run will redo, so the log has one record per epoch."""
    if Path(path).exists():
        keep = [line for line in Path(path).read_text().splitlines() if json.loads(line)["epoch"] < before_epoch]
        Path(path).write_text("".join(line + "\n" for line in keep))


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return (scores.argmax(-1) == labels).float().mean().item() if len(labels) else math.nan
