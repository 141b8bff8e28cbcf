#!/usr/bin/env python
"""The committed accuracy grids: ``cadel-compare`` (``cadel_modeling/compare``) with this benchmark's defaults, a
plain ``python -m`` per stage (as the grids ran), 30 epochs and IF 100, output under ``runs/lt_compare/``.

    python benchmarks/lt_compare.py                                   # the default grid: Fashion-MNIST-LT, IF 100
    python benchmarks/lt_compare.py --imb_factor 10                   # the second grid
    python benchmarks/lt_compare.py --recipes ce cadel --seeds 0 1 -- --dataset imagefolder --data_dir DIR
    python benchmarks/lt_compare.py --quick                           # a smoke run (tests)

Every flag of ``cadel-compare`` works here (``--help``). Writes ``<out>/results.json``, ``<out>/table.md`` and
``<out>/lt_compare.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from cadel_modeling.compare.cli import main as compare

REPO = Path(__file__).resolve().parents[1]


def main(argv: Optional[List[str]] = None) -> int:
    return compare(argv, prog="python benchmarks/lt_compare.py", out_root=str(REPO / "runs" / "lt_compare"),
                   plot_name="lt_compare.png", epochs=30, imb_factor=100.0, launcher="python")


if __name__ == "__main__":
    raise SystemExit(main())
