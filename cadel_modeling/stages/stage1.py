"""Stage 1: joint training of the cascade with the confidence-bin loss; best epoch chosen on validation.

Nothing of the output folder changes until every check has passed (configuration, data, model, the checkpoint to
resume, its signature and settings; ``run_folder.py``): a refused command leaves the folder byte-identical. Then the
run claims the folder (a fresh run id, or the resumed run's), writes its config and trains; every save checks that
all tensors are finite.
"""
from __future__ import annotations

import logging
import math
import platform
import time
import uuid
from pathlib import Path
from typing import Optional

import torch
from accelerate import DataLoaderConfiguration
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import set_seed

from ..config import RunConfig
from ..config.parsing import dropped_keys_note
from ..data import is_streamed
from ..data.gpu_augment import DeviceAugment
from ..data.loaders import (
    LoaderSpec,
    build_eval_loader,
    build_train_loader,
    per_process_batch,
    streamed_steps_per_epoch,
)
from ..inference import predict, predict_split, process_invariant_loader
from ..metrics import group_accuracies, top1
from ..modeling.costs import model_summary
from ..modeling.factory import build_model, init_from_model, load_model, save_model
from ..modeling.heads import adjust_logits, combine_exits
from ..results import write_report
from ..run_layout import (
    BEST_MODEL,
    CONFIG_FILE,
    LAST_MODEL,
    RUN_INFO_FILE,
    STAGE1_SUMMARY_FILE,
    TEXT_LOG_FILE,
    TRACKING,
    TRAIN_LOG_FILE,
    eval_dir,
)
from ..training.accelerator import enable_fast_kernels, replica_digests, sync_buffers_from_main
from ..training.checkpointing import (
    CheckpointError,
    TrainState,
    check_signature,
    latest_valid,
    load_checkpoint,
    save_checkpoint,
    signature_of,
)
from ..training.loop import LoopOptions, NonFiniteLossError, train_one_epoch
from ..training.losses import CascadeLoss
from ..training.optim import OptimizerSpec, build_optimizer
from ..training.preemption import Preempted, Preemption
from ..training.step_log import StepLogger
from ..utils.errors import ConfigError
from ..utils.finite import NonFiniteTensorError
from ..utils.io import append_jsonl, command_line, read_jsonl, rewrite_jsonl, write_json
from ..utils.logging import lines_above_bars, log_to_file
from .frame import StageFrame
from .run_folder import check_output_dir, check_resume_settings, claim_output_dir, result_settings, resume_target

logger = logging.getLogger("cadel")



def selection_scores(exit_logits: torch.Tensor, model_config) -> torch.Tensor:
    """Scores the original used to pick the best epoch: CNN raw last exit; ViT sum of exits with tau = 1."""
    if model_config.resolved_inference_rule == "sum":
        return adjust_logits(combine_exits(list(exit_logits), "sum"), model_config.class_counts, 1.0,
                             num_terms=exit_logits.shape[0])
    return exit_logits[-1]


def run_info(cfg: RunConfig, data, accelerator, init: Optional[dict]) -> dict:
    import accelerate
    import timm
    import transformers
    return {"run_id": cfg.run_id, "command": command_line(), "num_processes": accelerator.num_processes,
            "global_batch_size": cfg.batch_size,
            "batch_size_per_process": per_process_batch(cfg.batch_size, accelerator.num_processes,
                                                        cfg.grad_accum_steps),
            "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                         "accelerate": accelerate.__version__, "transformers": transformers.__version__},
            "class_names": data.class_names, "class_counts": data.class_counts, "data_notes": data.notes,
            "init_from": init}


def evaluate_best_on_val(accelerator, model_dir: Path, data, loader_spec: LoaderSpec) -> None:
    """``<model_dir>/eval_val``: every metric of the best model on the validation split (for the model card)."""
    model = load_model(model_dir)
    loader, size = process_invariant_loader(data, "val", loader_spec, accelerator.num_processes)
    model, loader = accelerator.prepare(model, loader)
    exit_logits, labels = predict_split(model, loader, accelerator, size, "val")
    write_report(exit_logits, labels, accelerator.unwrap_model(model).config, data, eval_dir(model_dir, "val"), "val",
                 is_main=accelerator.is_main_process, provenance={"command": command_line()})


def run(cfg: RunConfig) -> dict:
    enable_fast_kernels()
    frame = StageFrame(cfg, Path(cfg.output_dir) / TRACKING, gradient_accumulation_steps=cfg.grad_accum_steps,
                       mixed_precision=cfg.mixed_precision, dynamo_backend="inductor" if cfg.torch_compile else None,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    accelerator = frame.accelerator
    # -- checks: nothing is written before they all pass ------------------------------------------------------
    resume = resume_target(cfg)
    check_output_dir(cfg, resume)
    changes = []
    if resume is not None:  # the run's changes at earlier resumes (not those of another run's folder), then this one's
        earlier = [] if resume.foreign else resume.run_info.get("config_changes", [])
        changes = earlier + check_resume_settings(cfg, resume.meta)
    set_seed(cfg.seed)
    data = frame.build_data()
    model = build_model(cfg, data)
    init = init_from_model(model, cfg.init_from) if cfg.init_from else None
    signature = signature_of(cfg, model.config)
    if resume is not None:
        check_signature(resume.path, resume.meta, signature)
        cfg.run_id = resume.meta.get("run_id") or cfg.run_id
    else:
        cfg.run_id = uuid.uuid4().hex[:12]
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OptimizerSpec.from_config(cfg))
    loader_spec = LoaderSpec.from_config(cfg)
    train_loader = build_train_loader(data, loader_spec, accelerator.num_processes)
    val_loader = build_eval_loader(data, "val", loader_spec, accelerator.num_processes)
    streamed = is_streamed(data.train)
    if streamed:  # already split per process by the builder: accelerate must neither shard nor dispatch it again
        model, optimizer, val_loader = accelerator.prepare(model, optimizer, val_loader)
        train_loader = prepare_data_loader(train_loader, accelerator.device, num_processes=1, process_index=0,
                                           put_on_device=True, dispatch_batches=False)
        steps_per_epoch = streamed_steps_per_epoch(data, loader_spec, accelerator.num_processes)
    else:
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
        steps_per_epoch = len(train_loader) // cfg.grad_accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training split "
                          f"({data.num_train_images} images); lower --batch_size")
    loss_fn = CascadeLoss.from_config(cfg, data.class_counts).to(accelerator.device)
    net = accelerator.unwrap_model(model)
    state = TrainState()
    if resume is not None:
        load_checkpoint(resume.path, accelerator, model, optimizer, state)
        if streamed and state.step_in_epoch:
            raise CheckpointError("a streamed run resumes from epoch boundaries only; resume from an end-of-epoch "
                                  "checkpoint (its cadel_checkpoint.json shows step_in_epoch 0)")
    # -- the run claims its folder ----------------------------------------------------------------------------
    out = claim_output_dir(cfg, accelerator, resume)
    log_path = out / TRAIN_LOG_FILE
    if accelerator.is_main_process:
        log_to_file(out / TEXT_LOG_FILE)
        cfg.save(out / CONFIG_FILE)
        write_json(out / RUN_INFO_FILE, {**run_info(cfg, data, accelerator, init), "config_changes": changes})
        if resume is not None:  # drop records of epochs the resumed run redoes: one record per epoch
            rewrite_jsonl(log_path, [r for r in read_jsonl(log_path) if r["epoch"] < state.epoch])
            logger.info("resumed from %s at epoch %d, step %d", resume.path, state.epoch, state.step_in_epoch)
        logger.info("%s cascade, parameters and MACs per image:\n%s", cfg.backbone,
                    model_summary(net, cfg.image_size))
    for note in [dropped_keys_note(cfg), init and init["summary"]] + data.notes:
        if note:
            logger.info(note)
    if cfg.export_dataset and accelerator.is_main_process:
        from ..data.export import export_splits
        logger.info("exported the splits of this run to %s", export_splits(data, cfg.export_dataset, cfg.hub_token))
    meta = {**signature, "run_id": cfg.run_id, "epochs": cfg.epochs, "hparams": result_settings(cfg)}
    frame.start_tracking(out.name)
    log_step = StepLogger(accelerator, log_every=cfg.log_every, batch_size=cfg.batch_size, epochs=cfg.epochs,
                          steps_per_epoch=steps_per_epoch, start_step=state.global_step,
                          skipped_steps=lambda: state.skipped_steps)

    def checkpoint():
        save_checkpoint(accelerator, model, optimizer, state, out, cfg.keep_last_checkpoints, meta)

    opts = LoopOptions.from_config(cfg)
    prepare_batch = None
    if cfg.decode_on_gpu:
        augment = DeviceAugment(cfg.image_size, data.mean, data.std, data.train_color_jitter(cfg.color_jitter),
                                cfg.hflip, cfg.seed)

        def prepare_batch(batch):
            return augment(batch, state.epoch, accelerator.device)
    try:
        with Preemption() as preemption, lines_above_bars():
            while state.epoch <= cfg.epochs:
                t0 = time.time()
                train_loader.set_epoch(state.epoch)
                if hasattr(train_loader.dataset, "set_epoch"):  # per-row augmentation seeds; not always reached above
                    train_loader.dataset.set_epoch(state.epoch)
                stats = train_one_epoch(model, train_loader, optimizer, loss_fn, accelerator, opts, state,
                                        steps_per_epoch=steps_per_epoch, preemption=preemption,
                                        on_checkpoint=checkpoint, on_step=log_step, prepare_batch=prepare_batch)
                sync_buffers_from_main(accelerator, net)  # validation and saves see the same BatchNorm statistics
                if preemption.requested:
                    path = save_checkpoint(accelerator, model, optimizer, state, out, cfg.keep_last_checkpoints,
                                           meta)
                    raise Preempted(f"stopped by {preemption.signal_name or 'a signal'} at epoch {state.epoch} step "
                                    f"{state.step_in_epoch}; checkpoint {path} saved. Resume with: "
                                    f"{command_line()} --resume_from_checkpoint latest")
                val_logits, val_labels = predict(
                    model, val_loader, accelerator, desc="val",
                    exits=None if net.config.resolved_inference_rule == "sum" else [len(net.aux_exits) + 1])
                val_scores = selection_scores(val_logits, net.config)
                val_acc = top1(val_scores, val_labels)
                val_groups = group_accuracies(val_scores, val_labels, data.class_counts)
                improved = val_acc > state.best_metric
                if improved:
                    state.best_metric, state.best_epoch = val_acc, state.epoch
                    if accelerator.is_main_process:
                        save_model(net, out / BEST_MODEL, cfg, cfg.augmentation)
                if int(data.skipped_images):
                    logger.warning("%d unreadable images skipped so far (--bad_image_policy skip)",
                                   int(data.skipped_images))
                stats = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in stats.items()}
                record = {"epoch": state.epoch, **stats, "skipped_images": int(data.skipped_images),
                          "val_top1": val_acc, **{f"val_{g}": v for g, v in val_groups.items()},
                          "best_val_top1": state.best_metric, "best_epoch": state.best_epoch,
                          "epoch_time_s": round(time.time() - t0, 2)}
                accelerator.log({"val/top1": val_acc, **{f"val/{g}": v for g, v in val_groups.items() if v is not None},
                                 "train/epoch_loss": stats["train_loss"]}, step=state.global_step)
                logger.info("epoch %d/%d loss %s lr %.5f val top-1 %.2f%%%s", state.epoch, cfg.epochs,
                            "n/a" if stats["train_loss"] is None else f"{stats['train_loss']:.4f}", stats["lr"],
                            100 * val_acc, " (best)" if improved else "")
                if accelerator.is_main_process:
                    append_jsonl(log_path, record)
                state.epoch += 1
                state.step_in_epoch = 0
                checkpoint()
    except (NonFiniteLossError, NonFiniteTensorError) as exc:
        last = latest_valid(out, cfg.run_id)
        raise NonFiniteLossError(f"{exc}. Last good checkpoint: {last[0] if last else 'none'}; best model so far: "
                                 f"{out / BEST_MODEL if state.best_epoch else 'none'}") from exc
    if accelerator.is_main_process:
        save_model(net, out / LAST_MODEL, cfg, cfg.augmentation)
    accelerator.wait_for_everyone()
    rule = ("the tau=1 logit-adjusted sum of exits (ViT rule)" if net.config.resolved_inference_rule == "sum"
            else "the raw last exit (CNN rule)")
    summary = {"run_id": cfg.run_id, "best_val_top1": state.best_metric, "best_epoch": state.best_epoch,
               "epochs": cfg.epochs, "skipped_steps": state.skipped_steps, "selection": f"val top-1 of {rule}",
               "replica_weight_digests": replica_digests(accelerator, net)}
    if cfg.push_to_hub:  # the published stage-1 model carries its validation results
        evaluate_best_on_val(accelerator, out / BEST_MODEL, data, loader_spec)
    if accelerator.is_main_process:
        write_json(out / STAGE1_SUMMARY_FILE, summary)
    frame.finish(upload=out / BEST_MODEL)
    logger.info("stage 1 done: best val top-1 %.2f%% at epoch %d; model in %s", 100 * state.best_metric,
                state.best_epoch, out / BEST_MODEL)
    return summary
