"""Stage 1: joint training of the cascade with the confidence-bin loss; best epoch chosen on validation."""
from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path

import torch
from accelerate import DataLoaderConfiguration
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import set_seed

from .data import build_datasets, is_streamed
from .data.loaders import build_eval_loader, build_train_loader, streamed_steps_per_epoch
from .losses import CascadeLoss
from .modeling import build_model, model_summary
from .optim import build_optimizer
from .training import (Preemption, TrainState, accuracy, append_jsonl, check_checkpoint_signature, checkpoint_signature,
                       make_accelerator, predict, resolve_resume, save_checkpoint, save_model, selection_scores,
                       train_one_epoch, truncate_log, write_json)

logger = logging.getLogger("cadel")


def setup_logging(accelerator) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.ERROR, force=True)
    import datasets
    import transformers
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file is noise
    datasets.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def prepare_output_dir(cfg, accelerator, resuming: bool) -> Path:
    """Refuse to write into a used output_dir unless resuming or told to overwrite: results are never lost."""
    out = Path(cfg.output_dir)
    used = out.exists() and any(out.iterdir())
    if used and not (resuming or cfg.overwrite_output_dir):
        raise FileExistsError(f"output_dir {out} already holds a run; pass --resume_from_checkpoint latest to "
                              f"continue it, --overwrite_output_dir to write over it, or choose another --output_dir")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return out


def run_info(cfg, data, accelerator) -> dict:
    import accelerate
    import timm
    import transformers
    return {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                         "accelerate": accelerate.__version__, "transformers": transformers.__version__},
            "class_names": data.class_names, "class_counts": data.class_counts, "data_notes": data.notes}


def run(cfg) -> dict:
    if torch.cuda.is_available():  # fixed input sizes: let cuDNN pick the fastest kernels; TF32 for fp32 runs
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    accelerator = make_accelerator(gradient_accumulation_steps=cfg.grad_accum_steps,
                                   dynamo_backend="inductor" if cfg.torch_compile else None,
                                   dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    setup_logging(accelerator)
    resume_path = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir)
    out = prepare_output_dir(cfg, accelerator, resuming=bool(cfg.resume_from_checkpoint))
    set_seed(cfg.seed)
    with accelerator.main_process_first():
        data = build_datasets(cfg)
    if accelerator.is_main_process:
        cfg.save(out / "config.yaml")
        write_json(out / "run_info.json", run_info(cfg, data, accelerator))
    for note in data.notes:
        logger.info(note)

    model = build_model(cfg, data)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if accelerator.is_main_process:
        logger.info("%s cascade, parameters and MACs per image:\n%s", cfg.backbone,
                    model_summary(model, cfg.image_size))
    optimizer = build_optimizer(model, cfg)
    train_loader = build_train_loader(cfg, data, accelerator.num_processes)
    val_loader = build_eval_loader(cfg, data, "val", accelerator.num_processes)
    streamed = is_streamed(data.train)
    if streamed:  # already split per process by the builder: accelerate must neither shard nor dispatch it again
        model, optimizer, val_loader = accelerator.prepare(model, optimizer, val_loader)
        train_loader = prepare_data_loader(train_loader, accelerator.device, num_processes=1, process_index=0,
                                           put_on_device=True, dispatch_batches=False)
    else:
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    base_loss = cfg.base_loss if cfg.base_loss != "auto" else ("bce" if cfg.is_vit() else "ce")
    loss_fn = CascadeLoss(cfg.bins, cfg.gamma, cfg.base_weight, cfg.weight_mode, base_loss)

    state = TrainState()
    accelerator.register_for_checkpointing(state)
    net = accelerator.unwrap_model(model)
    signature = checkpoint_signature(cfg, net.config)
    log_path = out / "train_log.jsonl"
    if resume_path is not None:
        check_checkpoint_signature(resume_path, signature)
        accelerator.load_state(str(resume_path))
        logger.info("resumed from %s at epoch %d, step %d", resume_path, state.epoch, state.step_in_epoch)
        if accelerator.is_main_process:
            truncate_log(log_path, before_epoch=state.epoch)
    if streamed:
        if resume_path is not None and state.step_in_epoch:
            raise ValueError("a streamed run resumes from epoch boundaries only; resume from an end-of-epoch "
                             "checkpoint (checkpoints/step_*/cadel_checkpoint.json shows step_in_epoch 0)")
        steps_per_epoch = streamed_steps_per_epoch(cfg, data, accelerator.num_processes)
    else:
        steps_per_epoch = len(train_loader) // cfg.grad_accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training split "
                         f"({data.num_train_images} images)")

    def checkpoint():
        save_checkpoint(accelerator, out, state, cfg.keep_last_checkpoints, signature)

    with Preemption() as preemption:
        while state.epoch <= cfg.epochs:
            t0 = time.time()
            train_loader.set_epoch(state.epoch)
            if hasattr(train_loader.dataset, "set_epoch"):  # per-row augmentation seeds; not always reached above
                train_loader.dataset.set_epoch(state.epoch)
            stats = train_one_epoch(model, train_loader, optimizer, loss_fn, accelerator, cfg, state,
                                    steps_per_epoch, preemption, on_checkpoint=checkpoint)
            if preemption.requested:
                checkpoint()
                logger.warning("stopped by a signal at epoch %d step %d; checkpoint saved, resume with "
                               "--resume_from_checkpoint latest", state.epoch, state.step_in_epoch)
                return {"preempted": True, "epoch": state.epoch}
            vit_rule = net.config.resolved_inference_rule == "sum"  # CNN rule: the aux exits need not run
            val_logits, val_labels = predict(model, val_loader, accelerator,
                                             exits=None if vit_rule else [len(net.aux_exits) + 1], desc="val")
            val_acc = accuracy(selection_scores(val_logits, net.config), val_labels)
            improved = val_acc > state.best_metric
            if improved:
                state.best_metric, state.best_epoch = val_acc, state.epoch
                if accelerator.is_main_process:
                    save_model(net, out / "best_model", cfg)
            if int(data.skipped_images):
                logger.warning("%d unreadable images skipped so far (--bad_image_policy skip)",
                               int(data.skipped_images))
            record = {"epoch": state.epoch, **stats, "skipped_images": int(data.skipped_images), "val_top1": val_acc,
                      "best_val_top1": state.best_metric, "best_epoch": state.best_epoch,
                      "epoch_time_s": round(time.time() - t0, 2)}
            logger.info("epoch %d/%d loss %.4f lr %.5f val top-1 %.2f%%%s", state.epoch, cfg.epochs,
                        stats["train_loss"], stats["lr"], 100 * val_acc, " (best)" if improved else "")
            if accelerator.is_main_process:
                append_jsonl(log_path, record)
            state.epoch += 1
            state.step_in_epoch = 0
            checkpoint()
    if accelerator.is_main_process:
        save_model(net, out / "last_model", cfg)
    accelerator.wait_for_everyone()
    rule = ("the tau=1 logit-adjusted sum of exits (ViT rule)" if net.config.resolved_inference_rule == "sum"
            else "the raw last exit (CNN rule)")
    summary = {"best_val_top1": state.best_metric, "best_epoch": state.best_epoch, "epochs": cfg.epochs,
               "skipped_steps": state.skipped_steps, "selection": f"val top-1 of {rule}"}
    if accelerator.is_main_process:
        write_json(out / "stage1_summary.json", summary)
        if cfg.push_to_hub:  # after every local file is final; a failed push logs and keeps them
            from .hub import push_to_hub
            push_to_hub(out / "best_model", cfg.hub_model_id, private=cfg.hub_private)
    logger.info("stage 1 done: best val top-1 %.2f%% at epoch %d; model in %s", 100 * state.best_metric,
                state.best_epoch, out / "best_model")
    accelerator.end_training()
    return summary
