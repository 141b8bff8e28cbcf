"""Stage 2 from a stage-1 run: post-hoc logit adjustment with tau picked on validation (the original), or cRT."""
from __future__ import annotations

import logging
from pathlib import Path

from accelerate import Accelerator

from .data import build_datasets
from .data.loaders import build_eval_loader
from .evaluation import check_model_matches_data, load_model, report
from .metrics import format_table
from .posthoc import pick_tau, tau_sweep
from .training import predict, save_model, write_json

logger = logging.getLogger("cadel")


def run(cfg) -> dict:
    from .stage1 import setup_logging
    accelerator = Accelerator()
    setup_logging(accelerator)
    stage1 = Path(cfg.stage1_dir)
    model_dir = stage1 / "best_model"
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} has no model: run train_stage1.py with --output_dir {stage1} first")
    out = stage1 / f"stage2_{cfg.stage2_method}"
    with accelerator.main_process_first():
        data = build_datasets(cfg)
    model = load_model(model_dir)
    check_model_matches_data(model, data, str(model_dir))
    loaders = {s: build_eval_loader(cfg, data, s, accelerator.num_processes) for s in ("val", "test") if s in data.splits}
    model, *prepared = accelerator.prepare(model, *loaders.values())
    logits = {s: predict(model, dl, accelerator, desc=s) for s, dl in zip(loaders, prepared)}  # one pass per split
    net = accelerator.unwrap_model(model)
    rule = net.config.resolved_inference_rule
    val_logits, val_labels = logits["val"]
    sweep = tau_sweep(val_logits, val_labels, data.class_counts, cfg.tau_grid, rule, cfg.eval_exits)
    tau = pick_tau(sweep)
    logger.info("tau sweep on val (%s rule): %s -> tau=%g", rule,
                ", ".join(f"{r['tau']:g}: {100 * r['top1']:.2f}" for r in sweep), tau)
    net.config.tau = tau
    summary = {"method": "logit_adjustment", "tau": tau, "tau_selected_on": "val", "inference_rule": rule,
               "exits": cfg.eval_exits, "val_sweep": sweep}
    if "test" in logits:
        test_logits, test_labels = logits["test"]
        summary["test_sweep"] = tau_sweep(test_logits, test_labels, data.class_counts, cfg.tau_grid, rule,
                                          cfg.eval_exits)
        results = report(test_logits, test_labels, net.config, data, tau, out / "eval_test", "test",
                         cfg.eval_exits, accelerator.is_main_process)
        summary["test"] = {k: {m: v for m, v in r.items() if m != "per_class_accuracy"} for k, r in results.items()}
        if accelerator.is_main_process:
            print(f"\nstage 2 (logit adjustment, tau={tau:g} chosen on val) on the test split:")
            print(format_table(results))
    if accelerator.is_main_process:
        save_model(net, out / "model", cfg)
        write_json(out / "stage2_results.json", summary)
        logger.info("stage 2 done: model with tau=%g in %s", tau, out / "model")
    accelerator.wait_for_everyone()
    return summary
