"""Does CADEL help on my data, and with which exit rule? CADEL against strong long-tail baselines (CE + post-hoc
logit adjustment, the logit-adjusted loss, Balanced Softmax) trained the same way on the same data, over seeds.

    cadel-compare --recipes ce cadel --seeds 0 1 -- --dataset imagefolder --data_dir DIR --imb_factor null
    cadel-compare --launch_args="--num_processes 4 --mixed_precision bf16" --config cifar100_lt -- --data_dir DIR
    python -m cadel_modeling.compare                 # the default grid: Fashion-MNIST-LT, 6 recipes, 3 seeds
    python -m cadel_modeling.compare --quick         # a smoke run: tiny data and model, 2 epochs

Every recipe is the same preset (``--config``) with a few stage-1 flags changed, so the backbone, data,
augmentation (mixup included), schedule and epochs are the same; best epoch, tau and exit weights are chosen on the
validation split, and the test split is scored once. Flags after a bare ``--`` go to stage 1 of every run: any
dataset a run accepts (a preset's, ``--dataset imagefolder --data_dir DIR``, ``--dataset hub --hub_dataset_id
ID``); the preset's data settings apply to it too (``fashion_mnist_lt`` cuts a training split to IF 100:
``--imb_factor null`` keeps yours as it is). Each stage runs under ``accelerate launch`` (your ``accelerate
config``, or ``--launch_args``), or as a plain ``python -m`` (``--launcher python``). The table reports every recipe
against CE + post-hoc LA on the same seed.

Writes ``<out>/results.json`` (every run and the aggregates), ``<out>/table.md`` and a plot. Finished runs are kept:
rerun the same command after an interruption and the grid continues (a half-trained run resumes from its
checkpoint). Exit codes: 0 done, 1 a run failed, 2 bad input (one line; nothing written).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

from ..config import ConfigError, parse_config
from ..utils.io import write_json
from ..utils.secrets import redact, redact_args
from .recipes import BASELINE, DEFAULT_RECIPES, RECIPES
from .runs import Launcher, RunFailed, check_record, reads_back, stage1_command, train
from .tables import aggregate, markdown, paired, plot

# --quick's tiny data and model; its 2 epochs at IF 10 are set on args, so the flags, folder and report agree
QUICK = ["--n_max", "60", "--val_per_class", "10", "--backbone", "test_resnet", "--batch_size", "16",
         "--eval_batch_size", "100"]


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fashion_mnist_lt", help="the preset (or YAML) every run starts from")
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="stage-1 epochs (default: the preset's)")
    parser.add_argument("--imb_factor", type=float, default=None, help="imbalance of a built-in long-tailed dataset "
                        "(default: the preset's)")
    parser.add_argument("--out", default=None, help="output folder (default runs/compare/<config>[_if<IF>][_e<epochs>]"
                        "); use one per dataset")
    parser.add_argument("--results", default=None, help="also copy results.json here")
    parser.add_argument("--quick", action="store_true", help="tiny model and data, 2 epochs, seed 0 (tests)")
    parser.add_argument("--launcher", default="accelerate", choices=["accelerate", "python"],
                        help="start each stage with `accelerate launch` or a plain `python -m` (one process)")
    parser.add_argument("--launch_args", default="", help="flags for `accelerate launch`, in one string: "
                        "--launch_args=\"--num_processes 2\"")
    parser.add_argument("--rerun_stage2", action="store_true", help="run stage 2 again on every finished stage 1 "
                        "(e.g. to add what a newer stage 2 records, such as the robust exit rule, to older runs)")
    return parser


def describe(config: str, imb_factor: Optional[float], epochs: Optional[int]) -> str:
    return ", ".join([config] + ([f"IF {imb_factor:g}"] if imb_factor is not None else [])
                     + ([f"{epochs} epochs"] if epochs is not None else []))


def main(argv: Optional[List[str]] = None, prog: str = "cadel-compare", out_root: str = "runs/compare",
         plot_name: str = "compare.png", **defaults) -> int:
    """``defaults`` override the parser's (benchmarks/lt_compare.py: epochs 30, IF 100, the python launcher)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = build_parser(prog)
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.quick:  # over any default (benchmarks/lt_compare.py's 30 epochs at IF 100)
        args.epochs, args.imb_factor = 2, 10.0
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    base = ["--config", args.config] + (["--epochs", str(args.epochs)] if args.epochs is not None else []) \
        + (["--imb_factor", f"{args.imb_factor:g}"] if args.imb_factor is not None else []) \
        + (QUICK if args.quick else [])
    tag = Path(args.config).stem + (f"_if{args.imb_factor:g}" if args.imb_factor is not None else "") + \
        (f"_e{args.epochs}" if args.epochs is not None else "") + ("_quick" if args.quick else "")
    out = Path(args.out or Path(out_root) / tag)
    launcher = Launcher(args.launcher, shlex.split(args.launch_args))
    grid = [(seed, recipe) for seed in seeds for recipe in args.recipes]  # seed-major: a grid stopped early still
    try:                                                                  # compares every recipe on the same seeds
        # a typo after `--` is caught here, not after hours of training
        cfg = [parse_config(base + RECIPES[recipe][0] + extra) for recipe in args.recipes][0]
        for seed, recipe in grid:
            run_dir = out / recipe / f"seed{seed}"
            check_record(run_dir, stage1_command(launcher, run_dir, recipe, seed, base, extra))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"{len(grid)} runs in {out} ({args.launcher} launcher): {cfg.dataset} data"
          + (f" from {cfg.data_dir}" if cfg.data_dir else "")
          + (f", training split cut to IF {cfg.imb_factor:g} ({cfg.imb_type} profile"
             + ("; `-- --imb_factor null` keeps yours as it is)" if cfg.dataset in ("imagefolder", "hub") else ")")
             if cfg.imb_factor else "")
          + f", {cfg.backbone}, {cfg.epochs} epochs, mixup alpha {cfg.mixup_alpha:g}", flush=True)
    runs, started = [], time.time()
    for k, (seed, recipe) in enumerate(grid, 1):
        run_dir = out / recipe / f"seed{seed}"
        read_back = reads_back(run_dir, args.rerun_stage2)
        if not read_back:
            print(f"[{k}/{len(grid)}] {recipe} seed {seed}: training, log in {out / 'log.txt'}", flush=True)
        try:
            run = train(run_dir, recipe, seed, base, extra, out / "log.txt", launcher, args.rerun_stage2)
        except RunFailed as exc:
            print(f"error: {exc}. Finished runs are kept: the same command continues the grid", file=sys.stderr)
            return exc.exit_code
        runs.append(run)
        print(f"[{k}/{len(grid)}] {recipe} seed {seed}: " + ", ".join(
            f"{label} {100 * r['All']:.1f}" for label, r in run["rows"].items())
            + (" (read back)" if read_back else f" ({run['stage1_s'] + run['stage2_s']:.0f} s)"), flush=True)
    agg, diffs = aggregate(runs), paired(runs)
    table = markdown(agg, diffs)
    cpu_s = sum(r["stage1_s"] + r["stage2_s"] for r in runs)
    what = describe(args.config, args.imb_factor, args.epochs)
    shown_extra = redact_args(extra)  # recorded and drawn: a --hub_token given for stage 1 stays out of the files
    command = redact(" ".join([prog, shlex.join([*argv, *(["--", *extra] if extra else [])])]))  # `--` flags too
    how = (f"`{command}`: {what}, seeds {seeds}; best epoch, tau and exit weights chosen on val; "
           f"test split; {len(runs)} runs, {cpu_s / 60:.0f} min of stage 1 + stage 2 wall time summed over the runs")
    result = {"how": how, "recipes": {r: RECIPES[r][1] for r in args.recipes}, "extra_stage1_flags": shown_extra,
              "aggregate": agg, "paired_vs_baseline": {"baseline": BASELINE, "All": diffs}, "runs": runs,
              "wall_s": round(time.time() - started, 1)}
    write_json(out / "results.json", result)
    (out / "table.md").write_text(table + "\n\n" + how + "\n")
    plot(agg, diffs, out / plot_name, f"{what}{', ' + ' '.join(shown_extra) if extra else ''}, {len(seeds)} seeds")
    if args.results:
        write_json(args.results, result)
    print(table + "\n\n" + how)
    return 0
