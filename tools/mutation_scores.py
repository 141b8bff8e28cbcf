"""Per-module mutation scores from mutmut's result files (``mutants/**/*.py.meta``), as docs/testing.md reports them.

    python tools/mutation_scores.py            # after `mutmut run` (make mutation runs both)

Score = (killed + timeout) / (mutants tested), mutmut's own definition; mutants not yet run are counted apart, so a
run cut short says so instead of reporting a score over what it happened to reach.
"""
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def scores(root: Path = Path("mutants")) -> dict:
    table = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        status = Counter("not run" if code is None else status_by_exit_code[code] for code in codes.values())
        tested = sum(n for s, n in status.items() if s not in ("not run", "skipped", "no tests"))
        caught = status["killed"] + status["timeout"]
        table[str(meta.relative_to(root))[:-len(".meta")]] = {
            "mutants": len(codes), "tested": tested, "killed": caught, "survived": status["survived"],
            "not run": status["not run"], "no tests": status["no tests"],
            "score": round(100 * caught / tested, 1) if tested else None}
    return table


def main() -> int:
    table = scores()
    if not table:
        print("no mutmut results under mutants/: run `mutmut run` first", file=sys.stderr)
        return 2
    print("| module | mutants | tested | killed | survived | not run | score |")
    print("|---|---|---|---|---|---|---|")
    for module, r in table.items():
        score = "–" if r["score"] is None else f"{r['score']:.1f}%"
        print(f"| `{module}` | {r['mutants']} | {r['tested']} | {r['killed']} | {r['survived']} | {r['not run']} "
              f"| {score} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
