"""Stage 2 from a stage-1 run, then learned exit weights; every choice is made on the validation split.

- ``logit_adjustment`` (the original's whole stage 2): tau from the grid with the best validation top-1.
- ``crt`` (classifier re-training, see ``crt.py``): the chosen exits' cosine classifiers re-trained class-balanced,
  the best epoch kept; then tau on top (0 included, so adjustment is applied only when it helps on validation).
- Both then search exit weights and a tau for the ensemble (``ensemble.json`` next to the weights) and measure, by a
  paired bootstrap over the validation images, whether the best of them beats the model's own rule beyond chance;
  with ``select_inference_rule`` it becomes the model's rule only then (otherwise the paper's rule stays).

The network runs once per split: logits (and, for cRT, the classifiers' input features) are gathered once and
every candidate is scored in memory.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..config import RunConfig, load_run_config
from ..data.loaders import LoaderSpec
from ..metrics import format_table
from ..modeling.factory import save_model
from ..posthoc import (
    pick_tau,
    rule_change_evidence,
    rule_evidence_text,
    search_exit_weights,
    selected_exits,
    selection_name,
    tau_sweep,
)
from ..results import write_report
from ..run_layout import (
    CONFIG_FILE,
    ENSEMBLE_FILE,
    STAGE1_SUMMARY_FILE,
    STAGE2_MODEL,
    STAGE2_RESULTS_FILE,
    TRACKING,
    TRAIN_LOG_FILE,
    eval_dir,
    stage2_dir,
)
from ..utils.errors import ConfigError, OutputDirError
from ..utils.io import command_line, read_jsonl, write_json
from . import crt, logit_adjustment
from .frame import StageFrame

logger = logging.getLogger("cadel")

# The stage-2 methods by --stage2_method name: a module each, with split_logits, tau_grid and report_lines. A new
# method is one module and one line here (and its name in config/schema.py's choices; a test ties the two).
# stage2_results.json keeps the method's record under "crt" (None for logit adjustment), as it always has.
METHODS = {"logit_adjustment": logit_adjustment, "crt": crt}



def select_inference_rule(model_config, ensemble: dict, evidence: dict) -> dict:
    """Make the best of the model's rule, the other rule and the learned exit weights on validation the model's own
    rule, with its tau, when the evidence is strong (``posthoc.rule_change_evidence``); otherwise keep the model's
    rule (the paper's) and the tau chosen for it. Beyond the paper; recorded in stage2_results.json."""
    moved = evidence["strong"]
    if moved and ensemble["source"] == "grid":
        model_config.inference_rule, model_config.exit_weights = "weighted", list(ensemble["weights"])
    elif moved:
        model_config.inference_rule = "sum" if ensemble["source"].startswith("sum") else "last"
        model_config.exit_weights = None
    if moved:
        model_config.tau = ensemble["tau"]
    return {"rule": model_config.resolved_inference_rule, "exit_weights": model_config.exit_weights,
            "tau": model_config.tau, "selected_on": "val", "moved": moved,
            "source": ensemble["source"] if moved else evidence["model_rule"],
            "val_top1": evidence["candidate_val_top1" if moved else "model_rule_val_top1"]}


def choices_text(summary: dict, num_exits: int) -> str:
    """What stage 2 chose, one line per decision, for the log and the printed report."""
    lines = [f"stage 2 ({summary['method']}), every choice made on the validation split:"]
    lines += METHODS[summary["method"]].report_lines(summary["crt"])
    sweep = ", ".join(f"{r['tau']:g}: {100 * r['top1']:.2f}" for r in summary["val_sweep"])
    lines.append(f"  tau = {summary['tau']:g} for the {selection_name(tuple(summary['exits']), num_exits)} "
                 f"(val top-1 per tau: {sweep})")
    ens = summary.get("ensemble")
    if ens:
        rules = ", ".join(f"{name} {100 * v:.2f}%" for name, v in ens["rules_val_top1"].items())
        lines.append(f"  learned exit weights {'/'.join(f'{w:.2f}' for w in ens['normalized_weights'])} with tau = "
                     f"{ens['tau']:g}: val top-1 {100 * ens['val_top1']:.2f}% (best of the rules: {rules}; "
                     f"{ens['num_candidates']} candidates, grid step {ens['grid_step']:g})")
    if summary.get("rule_evidence"):
        lines.append(f"  {rule_evidence_text(summary['rule_evidence'])}")
    chosen = summary.get("selected_rule")
    if chosen:
        what = (f"learned exit weights {'/'.join(f'{w:g}' for w in chosen['exit_weights'])}"
                if chosen["rule"] == "weighted" else f"the {chosen['rule']} rule")
        lines.append(f"  the model {'now predicts' if chosen['moved'] else 'keeps predicting'} with {what}, "
                     f"tau = {chosen['tau']:g} (--select_inference_rule)")
    return "\n".join(lines)


def stage1_progress(stage1: Path) -> dict:
    """Whether the stage-1 run finished: its summary is written last, and its log holds every epoch (a run stopped
    by a signal, or extended and not yet done, has neither or fewer)."""
    epochs_done = max((r["epoch"] for r in read_jsonl(stage1 / TRAIN_LOG_FILE)), default=0)
    config = stage1 / CONFIG_FILE
    epochs = load_run_config(config).get("epochs") if config.is_file() else None
    summary = (stage1 / STAGE1_SUMMARY_FILE).is_file()
    return {"finished": summary and epochs is not None and epochs_done >= epochs, "epochs_done": epochs_done,
            "epochs": epochs, "summary": summary}


def run(cfg: RunConfig, model_dir: Path) -> dict:
    """Stage 2 of the stage-1 run in ``--stage1_dir`` from its best model ``model_dir`` (located and checked by
    ``cli.resolve_config``)."""
    if cfg.select_inference_rule and not cfg.exit_weight_step:  # flags alone: before data, forward passes, cRT
        raise ConfigError("--select_inference_rule chooses among the rules and the learned exit weights: it needs "
                          "--exit_weight_step > 0")
    stage1 = Path(cfg.stage1_dir)
    out = stage2_dir(stage1, cfg.stage2_method)
    frame = StageFrame(cfg, out / TRACKING)
    accelerator = frame.accelerator
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite_output_dir:
        raise OutputDirError(f"{out} already holds a stage-2 result; pass --overwrite_output_dir to replace it")
    stage1_state = stage1_progress(stage1)
    if not stage1_state["finished"]:
        logger.warning("stage 1 in %s has not finished (%d of %d epochs logged%s): stage 2 starts from its best "
                       "model so far; resume stage 1 (--resume_from_checkpoint latest) for the full run", stage1,
                       stage1_state["epochs_done"], stage1_state["epochs"] or 0,
                       "" if stage1_state["summary"] else ", no stage1_summary.json")
    data = frame.build_data()
    if "val" not in data.splits:
        raise ConfigError(f"stage 2 chooses tau, epochs and exit weights on a 'val' split, which {cfg.dataset} "
                          f"lacks; give the dataset a validation split (e.g. --val_per_class)")
    model = frame.load_checked_model(model_dir, data)
    main_exits = selected_exits(len(model.aux_exits) + 1, model.config.resolved_inference_rule, cfg.eval_exits)
    loader_spec = LoaderSpec.from_config(cfg)
    method = METHODS[cfg.stage2_method]
    logits, net, record = method.split_logits(cfg, accelerator, model, data, loader_spec)
    rule = net.config.resolved_inference_rule
    counts = net.config.class_counts
    grid = method.tau_grid(cfg)
    val_logits, val_labels = logits["val"]
    num_exits = val_logits.shape[0]
    sweep = tau_sweep(val_logits, val_labels, counts, grid, rule, cfg.eval_exits)
    tau = pick_tau(sweep)
    net.config.tau = tau
    step = cfg.exit_weight_step
    ensemble = search_exit_weights(val_logits.to(accelerator.device), val_labels, counts, grid, step, rule) \
        if step else None
    evidence = rule_change_evidence(val_logits, val_labels, counts, ensemble, rule, tau, cfg.select_rule_resamples,
                                    cfg.select_rule_confidence) if ensemble else None
    summary = {"method": cfg.stage2_method, "command": command_line(),
               "num_processes": accelerator.num_processes, "stage1": stage1_state,
               "inference_rule": rule, "exits": list(main_exits),
               "tau": tau, "tau_selected_on": "val", "tau_grid": grid, "val_top1": max(r["top1"] for r in sweep),
               "val_sweep": sweep, "crt": record, "ensemble": ensemble, "rule_evidence": evidence}
    if cfg.select_inference_rule:
        summary["selected_rule"] = select_inference_rule(net.config, ensemble, evidence)
    if accelerator.is_main_process:
        print("\n" + choices_text(summary, num_exits))
    if accelerator.is_main_process and out.exists():  # every check passed: replace (--overwrite_output_dir)
        shutil.rmtree(out)
        logger.warning("--overwrite_output_dir: removed the previous stage-2 result in %s", out)
    accelerator.wait_for_everyone()
    if "test" in logits:
        test_logits, test_labels = logits["test"]
        summary["test_sweep"] = tau_sweep(test_logits, test_labels, counts, grid, rule, cfg.eval_exits)
        results = write_report(test_logits, test_labels, net.config, data, eval_dir(out, "test"), "test",
                               exits=cfg.eval_exits, ensemble=ensemble, is_main=accelerator.is_main_process,
                               test_agnostic=cfg.eval_test_agnostic,
                               provenance={k: summary[k] for k in ("command", "num_processes")})
        summary["test"] = {name: {m: v for m, v in r.items() if m != "per_class_accuracy"}
                           for name, r in results.items()}
        if accelerator.is_main_process:
            print("\ntest split:\n" + format_table(results))
    frame.start_tracking(f"{stage1.name}_{out.name}")
    for i, r in enumerate(sweep):  # the tau curve, one point per grid value
        accelerator.log({"stage2/tau": r["tau"], "stage2/val_top1_at_tau": r["top1"]}, step=i)
    accelerator.log({"stage2/chosen_tau": net.config.tau, "stage2/val_top1": summary["val_top1"]}, step=len(sweep))
    if accelerator.is_main_process:
        save_model(net, out / STAGE2_MODEL, cfg, cfg.augmentation)
        if ensemble:  # save_model replaced the whole folder: a previous run's weights cannot outlive the search
            write_json(out / STAGE2_MODEL / ENSEMBLE_FILE, {**ensemble, "selected_on": "val"})
        write_json(out / STAGE2_RESULTS_FILE, summary)
        logger.info("stage 2 done: model with tau=%g in %s", net.config.tau, out / STAGE2_MODEL)
    frame.finish(upload=out / STAGE2_MODEL)
    return summary
