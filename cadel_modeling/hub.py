"""Publishing CADEL models on the Hugging Face Hub and finding them again, locally or on the Hub.

A published repository is a transformers model folder (``config.json`` with tau, class counts and labels,
``model.safetensors``, ``preprocessor_config.json``) plus the run that made it: the resolved configs, the training
log, the evaluation results and a model card whose metadata carries the measured numbers. torch, timm and
transformers are imported inside the functions, because ``evaluate.py`` imports this module before parsing its flags.

Retry a failed upload without retraining: ``python -m cadel_modeling.hub RUN_OR_MODEL_DIR --repo_id user/name``.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import yaml

logger = logging.getLogger("cadel")

RUN_CONFIG_NAME = "run_config.yaml"
MODEL_FILES = ("config.json", "preprocessor_config.json", RUN_CONFIG_NAME, "ensemble.json")
RUN_FILES = ("config.yaml", "run_info.json", "train_log.jsonl", "stage1_summary.json", "stage2_results.json")
RESULT_FILES = ("results.json", "per_class.csv", "per_class_accuracy.png")
CARD_METRICS = {"accuracy": "Top-1 accuracy", "many_accuracy": "Top-1 accuracy, many-shot classes (>100 images)",
                "medium_accuracy": "Top-1 accuracy, medium-shot classes (20-100 images)",
                "few_accuracy": "Top-1 accuracy, few-shot classes (<20 images)"}

# Top-1 (%) claimed in the original CADEL README (spec section 8.4); None where it gives no split.
PAPER_RESULTS: Dict[tuple, Dict[str, Optional[float]]] = {
    (dataset, model): dict(zip(("many_accuracy", "medium_accuracy", "few_accuracy", "accuracy"), numbers, strict=True))
    for dataset, model, numbers in [
        ("ImageNet-LT", "ResNet-50", (67.5, 55.6, 43.2, 58.5)),
        ("ImageNet-LT", "ResNeXt-50", (68.8, 55.8, 44.0, 59.2)),
        ("iNat18", "ResNet-50", (None, None, None, 73.5)),
        ("Places-LT", "ResNet-152", (None, None, None, 41.4)),
        ("ImageNet-LT", "ViT-B/16 224", (70.3, 59.8, 47.5, 61.7)),
        ("ImageNet-LT", "ViT-B/16 384", (73.0, 62.2, 50.3, 64.7)),
        ("iNat18", "ViT-B/16 224", (77.7, 76.3, 75.1, 76.2)),
        ("iNat18", "ViT-B/16 384", (75.0, 81.8, 85.4, 82.7)),
        ("Places-LT", "ViT-B/16 224", (46.6, 46.7, 46.5, 46.6)),
        ("Places-LT", "ViT-B/16 384", (47.9, 50.2, 38.5, 47.1)),
    ]
}
_PAPER_DATASETS = {"imagenetlt": "ImageNet-LT", "inat18": "iNat18", "inat2018": "iNat18", "inaturalist18": "iNat18",
                   "inaturalist2018": "iNat18", "placeslt": "Places-LT"}
_PAPER_BACKBONES = {"resnet50": "ResNet-50", "resnext50_32x4d": "ResNeXt-50", "resnet152": "ResNet-152"}

WEIGHT_MODES = {
    "per_sample": "per-sample cascade weights, as the paper describes (corrected for CNNs: the original CNN code "
                  "reduced them to one batch-level scalar; the original ViT code was already per-sample)",
    "batch_scalar_legacy": "faithful to the original CNN code, whose broadcasting bug turns the per-sample weights "
                           "into one batch-level scalar (the paper's CNN numbers were made this way)",
}


# -- finding models ------------------------------------------------------------------------------------------------
def find_model_dir(ref: str) -> Path:
    """A folder holding ``config.json`` + weights: ``ref`` itself, the newest model inside a run folder (stage 2
    before stage 1), or a Hub model id (``user/name``) from the local cache or downloaded to it."""
    path = Path(ref)
    if path.is_dir():
        if (path / "config.json").exists():
            return path
        candidates = sorted(path.glob("stage2_*/model"), key=lambda p: p.stat().st_mtime) + \
            [p for p in (path / "best_model",) if p.is_dir()]
        stage2 = [c for c in candidates if c.parent.name.startswith("stage2_")]
        chosen = stage2[-1] if stage2 else (candidates[0] if candidates else None)
        if chosen is None:
            raise FileNotFoundError(f"{path} holds no model (config.json) nor a run with best_model/ or "
                                    f"stage2_*/model/")
        return chosen
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise FileNotFoundError(f"no model folder at {ref}: pass a folder with config.json, a run folder, "
                                f"or a Hub model id such as user/cadel-resnet50-imagenet-lt")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    try:
        return Path(snapshot_download(ref))
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError) as exc:
        raise FileNotFoundError(f"{ref} is not a folder here and could not be fetched as a Hub model id "
                                f"(offline runs need it in the local cache): {exc}") from exc


def run_config_path(model_dir) -> Optional[Path]:
    p = Path(model_dir) / RUN_CONFIG_NAME
    return p if p.exists() else None


@dataclass
class RunFolders:
    """Where the parts of a run live: the model, its stage-2 folder (if any) and the stage-1 output_dir.

    A standalone model folder (or a downloaded Hub repository) is all three at once."""

    model_dir: Path
    stage_dir: Optional[Path]
    run_dir: Path

    @classmethod
    def locate(cls, path) -> "RunFolders":
        model_dir = find_model_dir(str(path))
        if model_dir.name == "model" and model_dir.parent.name.startswith("stage2_"):
            return cls(model_dir, model_dir.parent, model_dir.parent.parent)
        if model_dir.name in ("best_model", "last_model"):
            return cls(model_dir, None, model_dir.parent)
        return cls(model_dir, None, model_dir)

    def find(self, name: str) -> Optional[Path]:
        """A run file, looked up in the stage-2 folder, then the run folder."""
        for folder in (self.stage_dir, self.run_dir):
            if folder is not None and (folder / name).is_file():
                return folder / name
        return None

    def evaluations(self, extra: Sequence = ()) -> Dict[str, Path]:
        """split -> folder holding its ``results.json``; later folders win (the model's own over stage 2's, and
        ``extra`` over both)."""
        folders = [f for base in dict.fromkeys(filter(None, (self.run_dir, self.stage_dir, self.model_dir)))
                   for f in sorted(base.glob("eval_*"))] + [Path(f) for f in extra]
        found = {}
        for folder in folders:
            if (folder / "results.json").is_file():
                split = _read_json(folder / "results.json").get("split") or folder.name[len("eval_"):]
                found[split] = folder
        return found


def _read_json(path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _load(path: Optional[Path]) -> dict:
    """A JSON or YAML file as a dict; {} when there is none."""
    if path is None:
        return {}
    if path.suffix == ".json":
        return _read_json(path)
    return yaml.safe_load(path.read_text()) or {}


# -- transformers integration --------------------------------------------------------------------------------------
def register_auto_classes() -> None:
    """Let ``AutoConfig``, ``AutoModelForImageClassification`` and ``pipeline`` build CADEL models."""
    from transformers import AutoConfig, AutoModelForImageClassification

    from .modeling import CadelConfig, CadelForImageClassification
    AutoConfig.register(CadelConfig.model_type, CadelConfig, exist_ok=True)
    AutoModelForImageClassification.register(CadelConfig, CadelForImageClassification, exist_ok=True)


def build_image_processor(model_config, augmentation: str = "imagenet"):
    """The evaluation transform of ``data/transforms.py`` as a stock transformers processor: RGB, resize (shortest
    edge to size*256/224 then center crop for 'imagenet'; straight to size x size for 'small'/'none'), normalize
    with the model's mean/std. With the PIL backend the pixels are identical to evaluation's."""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    size = model_config.image_size
    if augmentation == "imagenet":
        resize = {"size": {"shortest_edge": round(size * 256 / 224)}, "do_center_crop": True}
    elif augmentation in ("small", "none"):
        resize = {"size": {"height": size, "width": size}, "do_center_crop": False}
    else:
        raise ValueError(f"unknown augmentation {augmentation!r}; use imagenet, small or none")
    return CLIPImageProcessor(do_convert_rgb=True, resample=PILImageResampling.BILINEAR,
                              crop_size={"height": size, "width": size}, image_mean=list(model_config.image_mean),
                              image_std=list(model_config.image_std), **resize)


def save_image_processor(model_dir, model_config, augmentation: str = "imagenet") -> None:
    """Write ``preprocessor_config.json`` next to the weights, so ``pipeline("image-classification")`` works."""
    build_image_processor(model_config, augmentation).save_pretrained(str(model_dir))


def _ensure_image_processor(model_dir: Path) -> None:
    """Models saved before processors were written get one, from their own config and run config."""
    if (model_dir / "preprocessor_config.json").exists():
        return
    from .modeling import CadelConfig
    augmentation = _load(run_config_path(model_dir)).get("augmentation", "imagenet")
    save_image_processor(model_dir, CadelConfig.from_pretrained(str(model_dir)), augmentation)


# -- model card ----------------------------------------------------------------------------------------------------
def paper_result(dataset: str, backbone: str, image_size: int) -> Optional[Dict[str, Optional[float]]]:
    """The original README's numbers (%) for this dataset and timm backbone, or None when it reports none."""
    data = _PAPER_DATASETS.get("".join(ch for ch in dataset.lower() if ch.isalnum()))
    arch = backbone.split(".")[0]
    model = f"ViT-B/16 {image_size}" if arch.startswith("vit_base_patch16") else _PAPER_BACKBONES.get(arch)
    return PAPER_RESULTS.get((data, model))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value, key: str = "accuracy") -> str:
    if _missing(value):
        return "–"
    return f"{value:.3f}" if key == "nll" else f"{100 * value:.1f}"


def build_model_card(path, repo_id: Optional[str] = None, eval_dirs: Sequence = (),
                     license: str = "apache-2.0"):
    """A ``huggingface_hub.ModelCard`` for a run or model folder: ``model-index`` metadata with overall and
    many/medium/few top-1 for every evaluated split, and a body with usage, a results table with the plots, the
    paper's number for this dataset and backbone, the commands, tau, loss mode and the uploaded files."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from .modeling import is_vit_backbone

    folders = RunFolders.locate(path)
    model_cfg = _read_json(folders.model_dir / "config.json")
    run_cfg = _load(run_config_path(folders.model_dir) or folders.find("config.yaml"))
    eval_folders = folders.evaluations(eval_dirs)
    evaluations = {split: _read_json(folder / "results.json") for split, folder in eval_folders.items()}
    backbone, dataset = model_cfg.get("backbone", "?"), run_cfg.get("dataset", "?")
    image_size = model_cfg.get("image_size", run_cfg.get("image_size"))
    tau = model_cfg.get("tau") or 0.0
    rule = model_cfg.get("inference_rule", "auto")
    if rule == "auto":
        rule = "sum" if is_vit_backbone(backbone) else "last"
    counts = model_cfg.get("class_counts") or []
    name = (repo_id or folders.run_dir.name).split("/")[-1]
    model_ref = repo_id or name

    eval_results = [
        EvalResult(task_type="image-classification", task_name="Long-tailed image classification",
                   dataset_type=run_cfg.get("hub_dataset_id") or dataset, dataset_name=dataset, dataset_split=split,
                   metric_type=key, metric_name=label, metric_value=round(main[key], 4))
        for split, result in evaluations.items() for main in [result["results"][result["main"]]]
        for key, label in CARD_METRICS.items() if not _missing(main.get(key))]
    card_data = ModelCardData(
        model_name=name, library_name="transformers", pipeline_tag="image-classification", license=license,
        datasets=[run_cfg["hub_dataset_id"]] if run_cfg.get("hub_dataset_id") else None, metrics=["accuracy"],
        tags=["cadel", "long-tailed", "imbalanced-classification", "timm", backbone.split(".")[0]],
        eval_results=eval_results or None)

    lines = [f"# {name}", "",
             f"CADEL (long-tailed classification by cascaded deep ensemble learning) on `{dataset}`, with a timm "
             f"`{backbone}` backbone at {image_size} px and {model_cfg.get('num_labels', len(counts))} classes"
             + (f" ({max(counts)} to {min(counts)} training images per class)" if counts else "") + ". "
             f"It predicts with the {'sum of the exits' if rule == 'sum' else 'last exit'}"
             + (f", logit-adjusted with tau = {tau:g} (scores are `logits - tau * log(class prior)`)." if tau
                else ", without logit adjustment (tau = 0)."), "",
             "## Use it", "", "```python", "import cadel_modeling", "from transformers import pipeline", "",
             "cadel_modeling.register_auto_classes()  # teaches transformers the 'cadel' model type",
             f'classifier = pipeline("image-classification", model="{model_ref}")',
             'classifier("image.jpg")  # softmax of the tau-adjusted logits', "```", "",
             f"Evaluate it: `accelerate launch evaluate.py --eval_model {model_ref} --data_dir <data>`.", ""]
    lines += _results_lines(evaluations, eval_folders, paper_result(dataset, backbone, image_size), dataset, backbone)
    lines += _provenance_lines(folders, run_cfg, tau, evaluations)
    lines += ["## Files", ""] + [f"- `{file}`: {_FILE_NOTES.get(file.split('/')[-1], 'weights')}"
                                 for file in files_to_upload(folders.model_dir, eval_dirs)]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


_FILE_NOTES = {
    "config.json": "model config: backbone, exits, inference rule, tau, class counts, labels",
    "model.safetensors": "weights", "model.safetensors.index.json": "index of the sharded weights",
    "preprocessor_config.json": "the evaluation transform, for `pipeline()`",
    RUN_CONFIG_NAME: "the full run config saved with these weights",
    "ensemble.json": "exit weights and tau learned on the validation split (stage 2)",
    "config.yaml": "the resolved stage-1 config", "run_info.json": "command, process count, versions, classes",
    "train_log.jsonl": "one line per stage-1 epoch", "stage1_summary.json": "best validation epoch",
    "stage2_results.json": "stage-2 method and tau sweep", "results.json": "metrics of every score variant",
    "per_class.csv": "per-class accuracy with training counts", "per_class_accuracy.png": "per-class accuracy plot",
}


def _results_lines(evaluations: dict, eval_folders: dict, paper: Optional[dict], dataset: str, backbone: str) -> list:
    """Markdown table of the main and tau=0 scores per split, the paper's row, the plots and the comparison."""
    from .metrics import TABLE_COLUMNS
    lines = ["## Results", "", "| Split | Scores | " + " | ".join(TABLE_COLUMNS) + " |",
             "|---|---|" + "---|" * len(TABLE_COLUMNS)]
    for split, result in evaluations.items():
        main = result["main"]
        for variant in [main] + [v for v in result["results"] if v != main and "alone" not in v]:
            values = result["results"][variant]
            lines.append(f"| {split} | {variant}{' (main)' if variant == main else ''} | "
                         + " | ".join(_fmt(values.get(k), k) for k in TABLE_COLUMNS.values()) + " |")
    if paper:
        lines.append("| paper | original CADEL README | " + " | ".join(
            "–" if _missing(paper.get(k)) else f"{paper[k]:.1f}" for k in TABLE_COLUMNS.values()) + " |")
    lines += ["", ("Accuracies, ECE and macro-F1 in %, NLL in nats. Shot groups count training images per class: "
                   "many > 100, medium 20-100, few < 20."), ""]
    for split, folder in eval_folders.items():
        if (folder / "per_class_accuracy.png").exists():
            lines += [f"![Per-class accuracy, {split} split](eval_{split}/per_class_accuracy.png)", ""]
    compared = evaluations.get("test") or next(iter(evaluations.values()), None)
    if paper is None:
        lines.append(f"Paper comparison: n/a (the original README reports no result for {dataset} with {backbone}).")
    elif compared is None:
        lines.append(f"Paper comparison: the original README reports {paper['accuracy']:.1f}% top-1; "
                     f"this model has not been evaluated yet.")
    else:
        ours = 100 * compared["results"][compared["main"]]["accuracy"]
        lines.append(f"Paper comparison: {ours:.1f}% top-1 on the {compared['split']} split against "
                     f"{paper['accuracy']:.1f}% in the original README ({ours - paper['accuracy']:+.1f} points).")
    return lines + [""]


def _provenance_lines(folders: RunFolders, run_cfg: dict, tau: float, evaluations: dict) -> list:
    """The commands, how tau was chosen, the loss mode, the recipe and the software of the run."""
    info = _load(folders.find("run_info.json"))
    stage1 = _load(folders.find("stage1_summary.json"))
    stage2 = _load(folders.find("stage2_results.json"))
    lines = ["## How it was made", ""]
    if info.get("command"):
        lines.append(f"- Stage 1: `{info['command']}`")
    if stage2:
        sweep = ", ".join(f"{r['tau']:g}: {100 * r['top1']:.1f}%" for r in stage2.get("val_sweep", []))
        lines.append(f"- Stage 2, {stage2.get('method', '?').replace('_', ' ')}"
                     + (f": `{stage2['command']}`" if stage2.get("command") else "")
                     + f"; tau = {stage2.get('tau', tau):g} chosen on the {stage2.get('tau_selected_on', 'val')} "
                     f"split" + (f" (top-1 per tau: {sweep})" if sweep else ""))
    else:
        lines.append(f"- No stage 2: tau = {tau:g}")
    lines += [f"- Evaluation on {split}: `{result['command']}`" for split, result in evaluations.items()
              if result.get("command")]
    if run_cfg.get("weight_mode"):
        mode = run_cfg["weight_mode"]
        lines.append(f"- Cascade loss weighting `{mode}`: {WEIGHT_MODES.get(mode, mode)}")
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
    return lines + ["", ("Repeat it from the uploaded resolved config: `accelerate launch train_stage1.py --config "
                         "config.yaml`, then `accelerate launch train_stage2.py --stage1_dir <its output_dir>`."), ""]


# -- upload --------------------------------------------------------------------------------------------------------
def files_to_upload(path, eval_dirs: Sequence = ()) -> Dict[str, Path]:
    """path in the repository -> local file: the model folder's files at the root (so ``from_pretrained(repo_id)``
    works), the run's configs, log and summaries, and ``eval_<split>/`` results. The model card is added by
    :func:`push_to_hub`."""
    folders = RunFolders.locate(path)
    files = {p.name: p for p in sorted(folders.model_dir.iterdir())
             if p.is_file() and (p.name in MODEL_FILES or p.name.endswith((".safetensors", ".safetensors.index.json")))}
    if not any(name.endswith(".safetensors") for name in files):
        raise FileNotFoundError(f"{folders.model_dir} has no .safetensors weights to upload")
    for name in RUN_FILES:
        found = folders.find(name)
        if found is not None:
            files[name] = found
    for split, folder in folders.evaluations(eval_dirs).items():
        for name in RESULT_FILES:
            if (folder / name).is_file():
                files[f"eval_{split}/{name}"] = folder / name
    return files


def _in_hub_cache(folder: Path) -> bool:
    parts = folder.resolve().parts
    return "snapshots" in parts and any(p.startswith("models--") for p in parts)


def push_to_hub(path, repo_id: Optional[str] = None, *, private: bool = False, token: Optional[str] = None,
                commit_message: str = "Upload CADEL model, configs and results", eval_dirs: Sequence = (),
                card_path=None) -> bool:
    """Upload a run or model folder (see :func:`files_to_upload`) with a model card, in one commit.

    Call it on the main process once the final model is written. The card is written locally first
    (``card_path``, default ``<run folder>/README.md``). A failed upload is logged and returns False; nothing local
    is touched but the card and a missing ``preprocessor_config.json``. ``repo_id`` defaults to the run folder's
    name (in the token's namespace); ``token`` defaults to ``HF_TOKEN`` or the saved login. For a model downloaded
    from the Hub, pass ``card_path`` outside the cache and the new results folders as ``eval_dirs``.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folders = RunFolders.locate(path)
    if card_path is None:
        if _in_hub_cache(folders.run_dir):
            raise ValueError(f"{folders.run_dir} is in the Hugging Face cache, where the model card must not be "
                             f"written: pass card_path (e.g. your output_dir/README.md)")
        card_path = folders.run_dir / "README.md"
    card_path = Path(card_path)
    repo_id = repo_id or folders.run_dir.name
    _ensure_image_processor(folders.model_dir)
    build_model_card(folders.model_dir, repo_id, eval_dirs).save(card_path)
    files = {**files_to_upload(folders.model_dir, eval_dirs), "README.md": card_path}
    try:
        api = HfApi(token=token)
        full_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if full_id != repo_id:  # the namespace was added by the Hub: show the real id in the usage snippet
            build_model_card(folders.model_dir, full_id, eval_dirs).save(card_path)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(local))
                      for name, local in files.items()]
        api.create_commit(repo_id=full_id, operations=operations, commit_message=commit_message)
    except Exception as exc:  # noqa: BLE001 - any upload failure must leave the finished run usable
        retry = (f"python -m cadel_modeling.hub {folders.model_dir} --repo_id {repo_id}"
                 + " --private" * private + "".join(f" --eval_dir {d}" for d in eval_dirs)
                 + (f" --card_path {card_path}" if eval_dirs else ""))
        logger.error("pushing %s to the Hub as %s failed (%s: %s). The local results are intact; retry with: %s",
                     folders.model_dir, repo_id, type(exc).__name__, exc, retry)
        return False
    logger.info("pushed %d files to https://huggingface.co/%s", len(files), full_id)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m cadel_modeling.hub",
                                     description="Upload a cadel run or model folder to the Hugging Face Hub.")
    parser.add_argument("path", help="a run folder (stage-1 output_dir) or a model folder")
    parser.add_argument("--repo_id", default=None, help="Hub repository id (default: the run folder's name)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--eval_dir", action="append", default=[], help="an extra eval_<split> folder to upload")
    parser.add_argument("--card_path", default=None, help="where to write README.md (default: in the run folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        pushed = push_to_hub(args.path, args.repo_id, private=args.private, eval_dirs=args.eval_dir,
                             card_path=args.card_path)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    return 0 if pushed else 1


if __name__ == "__main__":
    raise SystemExit(main())
