"""Evaluate a model on a split: overall / many / medium / few accuracy, top-5, per-class accuracy, macro-F1, ECE
and NLL for the model's inference rule (or chosen exits) before and after logit adjustment, for the other rule, each
exit alone and the learned exit weights of stage 2; JSON (nested and HF-style flat), CSV and a plot.

The network runs once over the split; every variant is computed from the gathered exit logits in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from ..config import RunConfig
from ..data.loaders import LoaderSpec
from ..inference import predict_split, process_invariant_loader
from ..metrics import format_table
from ..modeling.locate import load_ensemble
from ..posthoc import check_exit_numbers
from ..results import write_report
from ..run_layout import CARD_FILE, PER_CLASS_CSV, PER_CLASS_PLOT, RESULTS_FILE, TRACKING, eval_dir, eval_name
from ..utils.io import command_line
from .frame import StageFrame


def run(cfg: RunConfig, model_dir: Path) -> Dict[str, dict]:
    """Evaluate ``model_dir``, the model ``--eval_model`` names, located once by ``cli.resolve_config`` (a Hub model
    downloaded into the cache)."""
    local = Path(cfg.eval_model).is_dir()
    out_dir = eval_dir(model_dir if local else cfg.output_dir, cfg.eval_split)  # a Hub model's cache is read-only
    frame = StageFrame(cfg, out_dir / TRACKING)
    accelerator = frame.accelerator
    data = frame.build_data()
    model = frame.load_checked_model(model_dir, data)
    if cfg.eval_exits:  # before the network runs
        check_exit_numbers(len(model.aux_exits) + 1, cfg.eval_exits)
    ensemble = load_ensemble(model_dir)
    loader, size = process_invariant_loader(data, cfg.eval_split, LoaderSpec.from_config(cfg),
                                            accelerator.num_processes)
    model, loader = accelerator.prepare(model, loader)
    exit_logits, labels = predict_split(model, loader, accelerator, size, cfg.eval_split)
    net = accelerator.unwrap_model(model)
    test_agnostic = cfg.eval_test_agnostic
    results = write_report(exit_logits, labels, net.config, data, out_dir, cfg.eval_split, exits=cfg.eval_exits,
                           ensemble=ensemble, is_main=accelerator.is_main_process, test_agnostic=test_agnostic,
                           provenance={"command": command_line(), "num_processes": accelerator.num_processes})
    frame.start_tracking(eval_name(cfg.eval_split))
    if results:
        main = next(iter(results.values()))
        accelerator.log({f"eval/{cfg.eval_split}/{k}": v for k, v in main.items()
                         if isinstance(v, (int, float))}, step=0)
    if accelerator.is_main_process:
        print(f"\n{model_dir} on {cfg.dataset} {cfg.eval_split} ({len(labels)} images)")
        print(format_table(results))
        print(f"\nresults: {out_dir / RESULTS_FILE}, per-class: {out_dir / PER_CLASS_CSV}, "
              f"plot: {out_dir / PER_CLASS_PLOT}")
    if local:
        frame.finish(upload=model_dir)
    else:  # the results and the card of a Hub model live in output_dir, outside the read-only cache
        frame.finish(upload=model_dir, default_repo_id=cfg.eval_model, eval_dirs=[out_dir],
                     card_path=Path(cfg.output_dir) / CARD_FILE)
    return results
