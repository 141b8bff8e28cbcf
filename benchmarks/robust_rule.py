#!/usr/bin/env python
"""Does the robust exit rule ever cost accuracy? Over every CADEL run of the committed comparison grids, the test
top-1 of the paper's rule (the model's own: the last exit for a CNN) against the rule ``--select_inference_rule``
keeps (the exit weights best on val, only when a paired bootstrap over the validation images backs them).

    python benchmarks/robust_rule.py                       # every benchmarks/results/lt_compare_*.json
    python benchmarks/robust_rule.py GRID.json [GRID.json ...]

Prints a markdown table (one row per run, then the summary) and exits 1 when the acceptance of issue 28 fails: a
run more than 0.5 points below the paper's rule, or a mean below it. Runs whose stage 2 predates the rule have no
row (``cadel-compare --rerun_stage2`` adds it).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import List, Optional

from cadel_modeling.compare.tables import rule_check

RESULTS = Path(__file__).resolve().parent / "results"
WORST_ALLOWED = -0.5   # points: the most a single run may lose to the paper's rule


def table(grids: List[Path]) -> tuple:
    lines = ["| grid | recipe | seed | paper rule | robust rule | difference | bootstrap: learned weights ahead in |",
             "|---|---|---|---|---|---|---|"]
    checks = []
    for path in grids:
        for check in rule_check(json.loads(path.read_text())["runs"]):
            checks.append(check)
            chosen = "kept" if check["strong"] else "not kept"
            lines.append(f"| {path.stem.removeprefix('lt_compare_')} | {check['recipe']} | {check['seed']} | "
                         f"{check['paper']:.1f} | {check['robust']:.1f} | {check['difference']:+.1f} | "
                         f"{100 * check['fraction_ahead']:.1f}% ({chosen}) |")
    return "\n".join(lines), checks


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", nargs="*", type=Path, help="results.json files of cadel-compare")
    grids = parser.parse_args(argv).grids or sorted(RESULTS.glob("lt_compare_*.json"))
    text, checks = table(grids)
    diffs = [c["difference"] for c in checks]
    if not checks:
        print("no run with the rule evidence: rerun stage 2 (cadel-compare --rerun_stage2)")
        return 1
    ok = min(diffs) >= WORST_ALLOWED and statistics.fmean(diffs) >= 0
    print(text + f"\n\n{len(diffs)} runs: robust minus paper rule {statistics.fmean(diffs):+.2f} points on average, "
          f"worst {min(diffs):+.1f}, best {max(diffs):+.1f}; the learned weights kept in "
          f"{sum(c['strong'] for c in checks)} of them. "
          f"{'PASS' if ok else 'FAIL'} (no run below {WORST_ALLOWED}, mean >= 0)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
