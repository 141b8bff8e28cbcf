"""One run of a comparison: stage 1 and stage 2 of one recipe on one seed, each a subprocess (``accelerate launch``
with the user's settings, or a plain ``python -m``), its output appended to one log. A finished run is read back,
a half-trained one resumes from its latest checkpoint, and a finished stage 1 is not retrained."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from ..config import ConfigError
from ..run_layout import CHECKPOINTS, STAGE1_SUMMARY_FILE, STAGE2_RESULTS_FILE, stage2_dir
from ..utils.io import write_json
from ..utils.secrets import redact
from .recipes import RECIPES, run_rows

RUN_RECORD = "lt_compare_run.json"  # the name benchmarks/lt_compare.py always used: its run folders stay readable
STAGE1, STAGE2 = "cadel_modeling.train_stage1", "cadel_modeling.train_stage2"
EXIT_USAGE = ConfigError.exit_code  # the stages' code for bad input (cadel_modeling.cli)


@dataclass
class Launcher:
    """How each stage is started: ``accelerate`` (``accelerate launch`` with ``args``, e.g. ``--num_processes 4``;
    without them, the user's ``accelerate config``) or ``python`` (one process, as the committed grids ran)."""

    kind: str = "accelerate"
    args: Sequence[str] = ()

    def command(self, module: str) -> List[str]:
        if self.kind == "accelerate":  # this interpreter's accelerate, whatever `accelerate` is first on PATH
            return [sys.executable, "-m", "accelerate.commands.launch", *self.args, "-m", module]
        return [sys.executable, "-m", module]


class RunFailed(Exception):
    """A stage exited non-zero; ``exit_code`` is 2 when it refused bad input (its one line is in the message)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def stage1_command(launcher: Launcher, run_dir: Path, recipe: str, seed: int, base: Sequence[str],
                   extra: Sequence[str]) -> List[str]:
    return launcher.command(STAGE1) + list(base) + RECIPES[recipe][0] + list(extra) + \
        ["--seed", str(seed), "--output_dir", str(run_dir)]


def shown(cmd: Sequence[str]) -> str:
    """A command as recorded: the interpreter without its folder, any token redacted."""
    return redact(" ".join([Path(cmd[0]).name, *cmd[1:]]))


def stage1_flags(command: str) -> str:
    return command.split(STAGE1, 1)[-1]


def check_record(run_dir: Path, cmd: Sequence[str]) -> None:
    """A finished run in ``run_dir`` must have been trained with the same stage-1 flags, or the table would mix two
    experiments (e.g. another dataset given after ``--`` with the same ``--out``)."""
    record = run_dir / RUN_RECORD
    if record.is_file():
        before = json.loads(record.read_text())["command"]
        if stage1_flags(before) != stage1_flags(shown(cmd)):
            raise ConfigError(f"{run_dir} holds a run trained by `{before}`, not by this comparison's flags: give "
                              f"this comparison its own --out (or delete that folder to retrain it)")


def reads_back(run_dir: Path, rerun_stage2: bool) -> bool:
    """Whether the run in ``run_dir`` is read back as it is: its record is written (both stages done) and stage 2
    is not to run again."""
    return not rerun_stage2 and (run_dir / RUN_RECORD).is_file()


def run_logged(cmd: Sequence[str], log: Path, what: str) -> float:
    t0 = time.time()
    with open(log, "a") as fh:
        fh.write("$ " + redact(" ".join(cmd)) + "\n")
        fh.flush()
        start = fh.tell()
        done = subprocess.run(list(cmd), stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:  # the stage's own one-line reason, from its output only (the log is the grid's)
        with open(log, errors="replace") as fh:
            fh.seek(start)
            lines = fh.read().splitlines()
        reason = next((line for line in reversed(lines) if line.startswith("error: ")), "")
        raise RunFailed(f"{what} failed (exit {done.returncode}){': ' + reason[7:] if reason else ''}; its output "
                        f"is in {log}", EXIT_USAGE if done.returncode == EXIT_USAGE else 1)
    return time.time() - t0


def train(run_dir: Path, recipe: str, seed: int, base: Sequence[str], extra: Sequence[str], log: Path,
          launcher: Launcher, rerun_stage2: bool = False) -> dict:
    """Stage 1 + stage 2 of one run (each skipped when already done; ``rerun_stage2``: stage 2 again on the
    finished stage 1, e.g. for what a newer stage 2 records); returns the run's record."""
    record = run_dir / RUN_RECORD
    before = json.loads(record.read_text()) if record.is_file() else {}
    if reads_back(run_dir, rerun_stage2):
        return before
    stage1 = stage1_command(launcher, run_dir, recipe, seed, base, extra)
    resume = ["--resume_from_checkpoint", "latest"] if (run_dir / CHECKPOINTS).is_dir() else \
        (["--overwrite_output_dir"] if run_dir.exists() else [])
    what = f"{recipe} seed {seed}"
    train_stage1 = not (run_dir / STAGE1_SUMMARY_FILE).is_file()
    t1 = run_logged(stage1 + resume, log, f"stage 1 of {what}") if train_stage1 else before.get("stage1_s", 0.0)
    results = stage2_dir(run_dir, "logit_adjustment") / STAGE2_RESULTS_FILE
    # a stage 2 that finished after a finished stage 1 is kept (the run stopped before its record was written)
    t2 = run_logged(launcher.command(STAGE2) + ["--stage1_dir", str(run_dir)], log, f"stage 2 of {what}") \
        if train_stage1 or rerun_stage2 or not results.is_file() else 0.0
    result = json.loads(results.read_text())
    out = {"recipe": recipe, "seed": seed, "tau": result["tau"], "stage1_s": round(t1, 1), "stage2_s": round(t2, 1),
           "command": shown(stage1),
           "ensemble": {k: result["ensemble"][k] for k in ("weights", "tau", "source")} if result["ensemble"] else None,
           "rule_evidence": result.get("rule_evidence"), "rows": run_rows(recipe, result)}
    write_json(record, out)
    return out
