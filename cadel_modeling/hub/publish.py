"""Uploading a model with the run that made it, in one commit, and nothing the Hub should not see.

A published repository is a transformers model folder (``config.json`` with tau, class counts, labels and
``auto_map``, the remote-code files, ``model.safetensors``, ``preprocessor_config.json``) plus the run: the resolved
configs, the training log, the evaluation results and a model card. Checkpoints and optimizer states are never
uploaded; local paths are rewritten relative to the run folder (or dropped) in every uploaded text file; the token
never leaves the process. A failed upload keeps every local file and raises ``PushError`` with a retry command.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path
from typing import Dict, Optional, Sequence

import yaml

from ..run_layout import (
    CARD_FILE,
    ENSEMBLE_FILE,
    MODEL_CONFIG_FILE,
    PROCESSOR_FILE,
    PUBLISHED_RUN_FILES,
    RESULT_FILES,
    RUN_CONFIG_NAME,
    eval_name,
)
from ..utils.errors import ConfigError, MissingInputError
from ..utils.secrets import redact, without_secrets
from .model_card import build_model_card
from .run_folders import RunFolders

logger = logging.getLogger("cadel")

MODEL_FILES = (MODEL_CONFIG_FILE, PROCESSOR_FILE, RUN_CONFIG_NAME, ENSEMBLE_FILE, "modeling_cadel.py", "heads.py",
               "backbones.py")
TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".md", ".csv")
PATH_KEYS = ("output_dir", "data_dir", "image_root", "pretrained_checkpoint", "init_from", "stage1_dir", "eval_model",
             "tracking_dir", "export_dataset", "hub_dataset_id")
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])(/[^\s'\",;]+|~/[^\s'\",;]*|[A-Za-z]:\\[^\s'\",;]+)")


class PushError(RuntimeError):
    """The upload failed; every local file is kept. The message holds a command that retries it."""

    exit_code = 4


def _relative(text: str, run_dir: Path) -> str:
    """An absolute path inside the run folder becomes relative to it; any other becomes ``<local>/<name>``."""
    path = Path(text).expanduser()
    try:
        return str(path.resolve().relative_to(run_dir.resolve())) or "."
    except ValueError:
        return f"<local>/{path.name}"


def sanitize_text(text: str, run_dir: Path) -> str:
    """Every absolute local path in ``text`` (commands, notes) rewritten by :func:`_relative`, every token redacted
    (a run recorded before tokens were redacted at the source is uploaded clean too)."""
    return ABSOLUTE_PATH.sub(lambda m: _relative(m.group(0), run_dir), redact(text))


def sanitize_value(value, run_dir: Path):
    if isinstance(value, str):
        return sanitize_text(value, run_dir)
    if isinstance(value, list):
        return [sanitize_value(v, run_dir) for v in value]
    if isinstance(value, dict):
        return {k: sanitize_value(v, run_dir) for k, v in without_secrets(value).items()}
    return value


def upload_bytes(local: Path, run_dir: Path) -> bytes:
    """The bytes uploaded for ``local``: text files with local paths rewritten (and configs' path keys relative to
    the run folder, or dropped), binary files as they are."""
    if local.suffix not in TEXT_SUFFIXES:
        return local.read_bytes()
    if local.suffix == ".yaml":
        data = yaml.safe_load(local.read_text()) or {}
        for key in PATH_KEYS:
            value = data.get(key)
            if isinstance(value, str) and (value.startswith(("/", "~")) or Path(value).exists()):
                rel = _relative(value, run_dir)
                data[key] = None if rel.startswith("<local>") else rel
        return yaml.safe_dump(sanitize_value(data, run_dir), sort_keys=False).encode()
    if local.suffix == ".json":
        return json.dumps(sanitize_value(json.loads(local.read_text()), run_dir), indent=2).encode()
    return sanitize_text(local.read_text(), run_dir).encode()


def files_to_upload(path, eval_dirs: Sequence = ()) -> Dict[str, Path]:
    """path in the repository -> local file: the model folder's files at the root (so ``from_pretrained(repo_id)``
    works), the run's configs, log and summaries, and ``eval_<split>/`` results. The card is added by
    :func:`push_to_hub`."""
    folders = RunFolders.locate(path)
    files = {p.name: p for p in sorted(folders.model_dir.iterdir())
             if p.is_file() and (p.name in MODEL_FILES or p.name.endswith((".safetensors", ".safetensors.index.json")))}
    if not any(name.endswith(".safetensors") for name in files):
        raise MissingInputError(f"{folders.model_dir} has no .safetensors weights to upload")
    for name in PUBLISHED_RUN_FILES:
        found = folders.find(name)
        if found is not None:
            files[name] = found
    for split, folder in folders.evaluations(eval_dirs).items():
        for name in RESULT_FILES:
            if (folder / name).is_file():
                files[f"{eval_name(split)}/{name}"] = folder / name
    return files


def in_hub_cache(folder: Path) -> bool:
    parts = folder.resolve().parts
    return "snapshots" in parts and any(p.startswith("models--") for p in parts)


def retry_command(model_dir, repo_id: str, *, private: bool, revision: Optional[str], commit_message: Optional[str],
                  license: str, eval_dirs: Sequence, card_path) -> str:
    """The ``cadel-push-to-hub`` command that repeats this push, every setting included (the token never: it comes
    from HF_TOKEN or the saved login)."""
    flags = [str(model_dir), "--repo_id", repo_id, "--license", license] + ["--private"] * private
    flags += ["--revision", revision] if revision else []
    flags += ["--commit_message", commit_message] if commit_message else []
    for folder in eval_dirs:
        flags += ["--eval_dir", str(folder)]
    if Path(card_path) != Path(model_dir) / CARD_FILE:
        flags += ["--card_path", str(card_path)]
    return "cadel-push-to-hub " + " ".join(shlex.quote(flag) for flag in flags)


def push_to_hub(path, repo_id: Optional[str] = None, *, private: bool = False, token: Optional[str] = None,
                revision: Optional[str] = None, commit_message: Optional[str] = None, license: str = "other",
                eval_dirs: Sequence = (), card_path=None) -> str:
    """Upload a run or model folder (see :func:`files_to_upload`) with a model card, in one commit; returns the
    repository id.

    Call it on the main process once the final model is written. The card is written locally first (``card_path``,
    default ``<model folder>/README.md``: each model folder has its own card, which another stage's push never
    touches). ``repo_id`` defaults to the run folder's name (in the token's namespace);
    ``token`` to ``HF_TOKEN`` or the saved login; ``revision`` is a branch, created when missing. For a model
    downloaded from the Hub, pass ``card_path`` outside the cache and the new results folders as ``eval_dirs``.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folders = RunFolders.locate(path)
    if card_path is None:
        if in_hub_cache(folders.model_dir):
            raise ConfigError(f"{folders.model_dir} is in the Hugging Face cache, where the model card must not be "
                              f"written: pass card_path (e.g. your output_dir/README.md)")
        card_path = folders.model_dir / CARD_FILE
    card_path = Path(card_path)
    repo_id = repo_id or folders.run_dir.name
    files = files_to_upload(folders.model_dir, eval_dirs)
    listed = sorted(files) + [CARD_FILE]
    build_model_card(folders.model_dir, repo_id, eval_dirs, license, listed).save(card_path)
    try:
        api = HfApi(token=token)
        full_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if full_id != repo_id:  # the namespace was added by the Hub: show the real id in the usage snippet
            build_model_card(folders.model_dir, full_id, eval_dirs, license, listed).save(card_path)
        if revision:
            api.create_branch(full_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=upload_bytes(local, folders.run_dir))
                      for name, local in {**files, CARD_FILE: card_path}.items()]
        api.create_commit(repo_id=full_id, operations=operations, revision=revision,
                          commit_message=commit_message or "Upload CADEL model, configs and results")
    except Exception as exc:  # noqa: BLE001 - any upload failure must leave the finished run usable
        retry = retry_command(folders.model_dir, repo_id, private=private, revision=revision,
                              commit_message=commit_message, license=license, eval_dirs=eval_dirs, card_path=card_path)
        raise PushError(f"pushing {folders.model_dir} to the Hub as {repo_id} failed ({type(exc).__name__}: {exc}). "
                        f"The local results are intact; retry with: {retry}") from exc
    logger.info("pushed %d files to https://huggingface.co/%s", len(files) + 1, full_id)
    return full_id
