"""The recipes a comparison trains, each a few stage-1 flags on top of the same preset, and the rows of the table
that one run's stage-2 results give."""
from __future__ import annotations

from typing import Dict, List, Optional

SINGLE_EXIT = ["--exit_stages", "[]", "--gamma", "0", "--base_weight", "1"]  # one exit, unit weights: the plain loss
# recipe -> (stage-1 flags, what it is)
RECIPES = {
    "ce": (SINGLE_EXIT + ["--base_loss", "ce"], "cross-entropy, one exit"),
    "la_loss": (SINGLE_EXIT + ["--base_loss", "logit_adjusted"], "logit-adjusted loss (Menon et al. 2021, tau 1)"),
    "balanced_softmax": (SINGLE_EXIT + ["--base_loss", "balanced_softmax"], "Balanced Softmax (Ren et al. 2020)"),
    "cadel": ([], "CADEL, per-sample cascade weights (as intended)"),
    "cadel_legacy": (["--weight_mode", "batch_scalar_legacy"], "CADEL, the original CNN code's batch-scalar weights"),
    "cadel_balanced": (["--base_loss", "balanced_softmax"],
                       "CADEL with Balanced Softmax as base loss (beyond the paper)"),
    "balanced_bce": (["--exit_blocks", "[]", "--gamma", "0", "--base_weight", "1", "--base_loss", "balanced_bce"],
                     "LiVT's balanced BCE, one exit (ViT backbones)"),
}
DEFAULT_RECIPES = ["ce", "la_loss", "balanced_softmax", "cadel", "cadel_legacy", "cadel_balanced"]
LABELS = {"ce": "CE + post-hoc LA", "la_loss": "LA loss", "balanced_softmax": "Balanced Softmax", "cadel": "CADEL",
          "cadel_legacy": "CADEL, legacy weighting", "cadel_balanced": "CADEL + Balanced Softmax",
          "balanced_bce": "Balanced BCE"}
BASELINE = "CE + post-hoc LA"   # the row every other one is compared with, seed by seed
METRICS = {"All": "accuracy", "Many": "many_accuracy", "Medium": "medium_accuracy", "Few": "few_accuracy",
           "ECE": "ece"}


def rows_of(recipe: str) -> List[tuple]:
    """(row label, which score of a run): every recipe reports its stage-2 result (tau chosen on val, 0 included);
    CE also its raw stage-1 scores; the CADEL recipes also the exit weights best on val, and the exit rule
    ``--select_inference_rule`` would keep (those weights only when the paired bootstrap on val backs them)."""
    label = LABELS[recipe]
    rows = [(label, "stage2")]
    if recipe == "ce":
        rows.insert(0, ("CE", "stage1"))
    if recipe.startswith("cadel"):
        rows += [(f"{label} + exit weights on val", "ensemble"), (f"{label} + robust exit rule", "robust")]
    return rows


def pick(test: Dict[str, dict], which: str, tau: float) -> dict:
    """The test metrics of one score variant of a stage-2 result."""
    if which == "ensemble":
        return next(v for k, v in test.items() if k.startswith("learned exit weights"))
    suffix = "tau=0" if which == "stage1" else f"tau={tau:g}"
    main = [k for k in test if not k.startswith(("exit ", "learned", "sum")) and k.endswith(suffix)]
    return test[main[0]]


def run_rows(recipe: str, result: dict) -> Dict[str, Dict[str, Optional[float]]]:
    """row label -> {metric: value} from one run's stage2_results.json. The robust row needs the rule evidence
    that stage 2 records (older results lack it: no row)."""
    rows = {}
    for label, which in rows_of(recipe):
        if which == "robust":
            evidence = result.get("rule_evidence")
            if not evidence:
                continue
            which = "ensemble" if evidence["strong"] else "stage2"
        variant = pick(result["test"], which, result["tau"])
        rows[label] = {name: variant[key] for name, key in METRICS.items()}
    return rows
