"""The model card of a published model: metadata the Hub understands (library, pipeline, licence, datasets, base
model, ``model-index`` results) and a body that says what the model is, how to use it with or without cadel, the
results with the plots, the paper's number, and exactly how it was made."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from ..config.paper import paper_result
from ..metrics.reports import TABLE_COLUMNS, format_number
from ..modeling.backbones import backbone_family, default_inference_rule
from ..modeling.locate import is_hub_id
from ..posthoc import rule_evidence_text
from ..run_layout import (
    ALL_RESULTS_FILE,
    CARD_FILE,
    CONFIG_FILE,
    ENSEMBLE_FILE,
    MODEL_CONFIG_FILE,
    PER_CLASS_CSV,
    PER_CLASS_PLOT,
    PROCESSOR_FILE,
    RESULTS_FILE,
    RUN_CONFIG_NAME,
    RUN_INFO_FILE,
    STAGE1_SUMMARY_FILE,
    STAGE2_RESULTS_FILE,
    TRAIN_LOG_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    eval_name,
)
from ..utils.io import read_json
from .run_folders import RunFolders, load_file

# (metric key, model-index config, name): top-1 is the standard 'accuracy'; the others say what they measure
CARD_METRICS = [("accuracy", None, "Top-1 accuracy"),
                ("many_accuracy", "many-shot", "Top-1 accuracy, many-shot classes (>100 training images)"),
                ("medium_accuracy", "medium-shot", "Top-1 accuracy, medium-shot classes (20-100 training images)"),
                ("few_accuracy", "few-shot", "Top-1 accuracy, few-shot classes (<20 training images)"),
                ("top5_accuracy", "top-5", "Top-5 accuracy")]
# Hub ids of the data behind the built-in datasets (the long-tailed splits are made from them by seeded rules)
DATASET_HUB_IDS = {"fashion_mnist_lt": "zalando-datasets/fashion_mnist", "cifar10_lt": "uoft-cs/cifar10",
                   "cifar100_lt": "uoft-cs/cifar100"}
WEIGHT_MODES = {
    "per_sample": "per-sample cascade weights, as the paper describes (corrected for CNNs: the original CNN code "
                  "reduced them to one batch-level scalar; the original ViT code was already per-sample)",
    "batch_scalar_legacy": "faithful to the original CNN code, whose broadcasting bug turns the per-sample weights "
                           "into one batch-level scalar (the paper's CNN numbers were made this way)",
}
FILE_NOTES = {
    MODEL_CONFIG_FILE: "model config: backbone, exits, inference rule, tau, class counts, labels, auto_map",
    "modeling_cadel.py": "remote code: the model (loads with trust_remote_code=True where cadel is not installed)",
    "heads.py": "remote code: the exits' heads and the rules that combine them",
    "backbones.py": "remote code: which timm backbones are ViTs",
    WEIGHTS_FILE: "weights", WEIGHTS_INDEX_FILE: "index of the sharded weights",
    PROCESSOR_FILE: "the evaluation transform, for `pipeline()` and `AutoImageProcessor`",
    RUN_CONFIG_NAME: "the full run config saved with these weights (local paths removed)",
    ENSEMBLE_FILE: "exit weights and tau learned on the validation split (stage 2)",
    CONFIG_FILE: "the resolved stage-1 config", RUN_INFO_FILE: "command, process count, versions, classes",
    TRAIN_LOG_FILE: "one line per stage-1 epoch", STAGE1_SUMMARY_FILE: "best validation epoch",
    STAGE2_RESULTS_FILE: "stage-2 method and tau sweep", RESULTS_FILE: "metrics of every score variant",
    ALL_RESULTS_FILE: "the main metrics as flat eval_* keys",
    PER_CLASS_CSV: "per-class accuracy with training counts",
    PER_CLASS_PLOT: "per-class accuracy plot", CARD_FILE: "this model card",
}


def file_note(path: str) -> str:
    """What a repository file holds; weight shards by their suffix."""
    name = path.split("/")[-1]
    if name in FILE_NOTES:
        return FILE_NOTES[name]
    return "weights (one shard)" if name.endswith(".safetensors") else "a file of the run"


def dataset_hub_id(run_cfg: dict) -> Optional[str]:
    if run_cfg.get("dataset") == "hub" and run_cfg.get("hub_dataset_id") and is_hub_id(run_cfg["hub_dataset_id"]):
        return run_cfg["hub_dataset_id"]
    return DATASET_HUB_IDS.get(run_cfg.get("dataset"))


def base_model_of(run_cfg: dict) -> Optional[str]:
    """The Hub model this one was started from: a cadel model (``init_from``) or timm's pretrained backbone."""
    if run_cfg.get("init_from") and is_hub_id(run_cfg["init_from"]):
        return run_cfg["init_from"]
    if run_cfg.get("pretrained") and run_cfg.get("backbone"):
        return f"timm/{run_cfg['backbone']}"
    return None


def eval_results(evaluations: Dict[str, dict], dataset: str, hub_id: Optional[str]) -> list:
    from huggingface_hub import EvalResult
    return [EvalResult(task_type="image-classification", task_name="Long-tailed image classification",
                       dataset_type=hub_id or dataset, dataset_name=dataset, dataset_split=split,
                       metric_type="accuracy", metric_name=name, metric_config=config,
                       metric_value=round(100 * main[key], 2))
            for split, result in evaluations.items() for main in [result["results"][result["main"]]]
            for key, config, name in CARD_METRICS if format_number(main.get(key)) != "-"]


def build_model_card(path, repo_id: Optional[str] = None, eval_dirs: Sequence = (), license: str = "other",
                     files: Sequence[str] = ()):
    """A ``huggingface_hub.ModelCard`` for a run or model folder (``files``: the repository's files, listed)."""
    from huggingface_hub import ModelCard, ModelCardData

    folders = RunFolders.locate(path)
    model_cfg = read_json(folders.model_dir / MODEL_CONFIG_FILE)
    run_cfg = load_file(folders.find(RUN_CONFIG_NAME) or folders.find(CONFIG_FILE))
    eval_folders = folders.evaluations(eval_dirs)
    evaluations = {split: read_json(folder / RESULTS_FILE) for split, folder in eval_folders.items()}
    backbone, dataset = model_cfg.get("backbone", "?"), run_cfg.get("dataset", "?")
    image_size = model_cfg.get("image_size", run_cfg.get("image_size"))
    tau = model_cfg.get("tau") or 0.0
    rule = model_cfg.get("inference_rule", "auto")
    if rule == "auto":
        rule = default_inference_rule(backbone_family(backbone))
    counts = model_cfg.get("class_counts") or []
    name = (repo_id or folders.run_dir.name).split("/")[-1]
    model_ref = repo_id or name
    hub_dataset = dataset_hub_id(run_cfg)
    base_model = base_model_of(run_cfg)
    card_data = ModelCardData(
        model_name=name, library_name="transformers", pipeline_tag="image-classification", license=license,
        datasets=[hub_dataset] if hub_dataset else None, base_model=base_model, metrics=["accuracy"],
        tags=["cadel", "long-tailed", "imbalanced-classification", "timm", backbone.split(".")[0]],
        eval_results=eval_results(evaluations, dataset, hub_dataset) or None)
    rule_text = {"sum": "the sum of its exits", "last": "its last exit",
                 "weighted": "exit weights learned on the validation split "
                             f"({'/'.join(f'{w:g}' for w in model_cfg.get('exit_weights') or [])})"}[rule]
    lines = [f"# {name}", "",
             f"CADEL (long-tailed classification by cascaded deep ensemble learning) on `{dataset}`, with a timm "
             f"`{backbone}` backbone at {image_size} px and {model_cfg.get('num_labels', len(counts))} classes"
             + (f" ({max(counts)} to {min(counts)} training images per class)" if counts else "") + ". "
             f"It predicts with {rule_text}"
             + (f", logit-adjusted with tau = {tau:g} (scores are `logits - tau * log(class prior)`)." if tau
                else ", without logit adjustment (tau = 0)."), "",
             "## Use it", "",
             "With transformers alone (the model's code comes with it; needs `torch`, `timm`, `transformers`):", "",
             "```python", "from transformers import pipeline", "",
             f'classifier = pipeline("image-classification", model="{model_ref}", trust_remote_code=True)',
             'classifier("image.jpg")  # softmax of the tau-adjusted logits', "```", "",
             "The backbone alone as a timm model, and cadel's own loading, training and evaluation "
             "(`pip install cadel`):", "",
             "```bash", f"cadel-export-timm {model_ref} timm_backbone/   # then timm.create_model('hf-hub:...') or "
             f"from a local folder", f"accelerate launch -m cadel_modeling.evaluate --eval_model {model_ref} "
             f"--data_dir <data>", "```", ""]
    lines += _results_lines(evaluations, eval_folders, paper_result(dataset, backbone, image_size), dataset, backbone)
    lines += _provenance_lines(folders, run_cfg, tau, evaluations)
    if files:
        lines += ["## Files", ""] + [f"- `{file}`: {file_note(file)}" for file in files]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _results_lines(evaluations: dict, eval_folders: dict, paper: Optional[dict], dataset: str, backbone: str) -> list:
    """Markdown table of the main and the other scores per split, the paper's row, the plots and the comparison."""
    lines = ["## Results", ""]
    if not evaluations:
        return lines + ["Not evaluated yet.", ""]
    lines += ["| Split | Scores | " + " | ".join(TABLE_COLUMNS) + " |", "|---|---|" + "---|" * len(TABLE_COLUMNS)]
    for split, result in evaluations.items():
        main = result["main"]
        for variant in [main] + [v for v in result["results"] if v != main and "alone" not in v]:
            values = result["results"][variant]
            lines.append(f"| {split} | {variant}{' (main)' if variant == main else ''} | "
                         + " | ".join(format_number(values.get(k), k, "–") for k in TABLE_COLUMNS.values()) + " |")
    if paper:
        lines.append("| paper | original CADEL README | " + " | ".join(
            "–" if paper.get(k) is None else f"{paper[k]:.1f}" for k in TABLE_COLUMNS.values()) + " |")
    lines += ["", ("Accuracies, ECE and macro-F1 in %, NLL in nats. Shot groups count training images per class: "
                   "many > 100, medium 20-100, few < 20."), ""]
    for split, folder in eval_folders.items():
        if (folder / PER_CLASS_PLOT).exists():
            lines += [f"![Per-class accuracy, {split} split]({eval_name(split)}/{PER_CLASS_PLOT})", ""]
    compared = evaluations.get("test") or next(iter(evaluations.values()))
    if paper is None:
        lines.append(f"Paper comparison: n/a (the original README reports no result for {dataset} with {backbone}).")
    else:
        ours = 100 * compared["results"][compared["main"]]["accuracy"]
        lines.append(f"Paper comparison: {ours:.1f}% top-1 on the {compared['split']} split against "
                     f"{paper['accuracy']:.1f}% in the original README ({ours - paper['accuracy']:+.1f} points).")
    return lines + [""]


def _provenance_lines(folders: RunFolders, run_cfg: dict, tau: float, evaluations: dict) -> List[str]:
    """The commands, how tau was chosen, the loss mode, the recipe and the software of the run."""
    info = load_file(folders.find(RUN_INFO_FILE))
    stage1 = load_file(folders.find(STAGE1_SUMMARY_FILE))
    stage2 = load_file(folders.find(STAGE2_RESULTS_FILE))
    lines = ["## How it was made", ""]
    if info.get("command"):
        lines.append(f"- Stage 1: `{info['command']}`")
    if stage2:
        sweep = ", ".join(f"{r['tau']:g}: {100 * r['top1']:.1f}%" for r in stage2.get("val_sweep", []))
        lines.append(f"- Stage 2, {stage2.get('method', '?').replace('_', ' ')}"
                     + (f": `{stage2['command']}`" if stage2.get("command") else "")
                     + f"; tau = {stage2.get('tau', tau):g} chosen on the {stage2.get('tau_selected_on', 'val')} "
                     f"split" + (f" (top-1 per tau: {sweep})" if sweep else ""))
        chosen, evidence = stage2.get("selected_rule"), stage2.get("rule_evidence")
        if chosen and evidence:
            decision = "moved to the best on val" if chosen["moved"] else "kept the model's own rule"
            lines.append(f"- Exit rule (`--select_inference_rule`, beyond the paper): {decision}; "
                         f"{rule_evidence_text(evidence)}")
    else:
        lines.append(f"- No stage 2: tau = {tau:g}")
    lines += [f"- Evaluation on {split}: `{result['command']}`" for split, result in evaluations.items()
              if result.get("command")]
    if run_cfg.get("weight_mode"):
        mode = run_cfg["weight_mode"]
        lines.append(f"- Cascade loss weighting `{mode}`: {WEIGHT_MODES.get(mode, mode)}; per-exit loss "
                     f"`{run_cfg.get('base_loss', 'auto')}`")
    epochs = run_cfg.get("epochs", "?")
    lines.append(f"- {epochs} epoch{'' if epochs == 1 else 's'}"
                 + (f" (best validation top-1 {100 * stage1['best_val_top1']:.1f}% at epoch {stage1['best_epoch']})"
                    if "best_val_top1" in stage1 else "")
                 + f", seed {run_cfg.get('seed', '?')}, batch size {run_cfg.get('batch_size', '?')}, "
                 f"{run_cfg.get('optimizer', '?')} at lr {run_cfg.get('lr', '?')}, mixup alpha "
                 f"{run_cfg.get('mixup_alpha', '?')}, {run_cfg.get('sampler', '?')} sampling, "
                 f"{'pretrained' if run_cfg.get('pretrained') else 'randomly initialised'} backbone")
    if info.get("versions"):
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        processes = info.get("num_processes", 1)
        lines.append(f"- {processes} process{'' if processes == 1 else 'es'}, mixed precision "
                     f"{info.get('mixed_precision', 'no')}; {versions}")
    lines += [f"- Data: {note}" for note in info.get("data_notes", [])]
    return lines + ["", ("Repeat it from the uploaded resolved config: `accelerate launch -m "
                         "cadel_modeling.train_stage1 --config config.yaml --data_dir <data>`, then `accelerate "
                         "launch -m cadel_modeling.train_stage2 --stage1_dir <its output_dir>`."), ""]
