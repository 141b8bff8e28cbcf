"""The exact splits a run used, as a Hugging Face ``DatasetDict`` anyone can load: train / validation / test with
``ClassLabel`` names and ``Image`` features, images embedded (not paths), written with ``save_to_disk`` to a folder
or uploaded with ``push_to_hub`` to a Hub dataset id. Load it back with ``--dataset hub --hub_dataset_id <it>``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..utils.errors import ConfigError
from .base import LongTailedData, is_streamed
from .transforms import undecoded

SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def _embedded(split, image_column: str, label_column: str):
    """The split's image and label columns, renamed to image/label, with every image's bytes in the table."""
    from datasets import Image

    def read(batch):
        return {"image": [{"bytes": cell["bytes"] if cell["bytes"] is not None else Path(cell["path"]).read_bytes(),
                           "path": None} for cell in batch["image"]]}

    split = undecoded(split.select_columns([image_column, label_column]), image_column)
    if image_column != "image":
        split = split.rename_column(image_column, "image")
    if label_column != "label":
        split = split.rename_column(label_column, "label")
    return split.map(read, batched=True, batch_size=256).cast_column("image", Image())


def export_splits(data: LongTailedData, target: str, token: Optional[str] = None) -> str:
    """Write the splits to ``target``: a folder (save_to_disk), or a Hub dataset id ``user/name`` (push_to_hub)."""
    from datasets import DatasetDict

    from ..modeling.locate import is_hub_id
    if is_streamed(data.train):
        raise ConfigError("--export_dataset writes map-style splits; a streamed training split cannot be exported "
                          "(drop --streaming)")
    splits = {"train": data.train, **data.splits}
    exported = DatasetDict({SPLIT_NAMES[name]: _embedded(split, data.image_column, data.label_column)
                            for name, split in splits.items() if name in SPLIT_NAMES})
    if is_hub_id(target):
        exported.push_to_hub(target, token=token)
        return f"https://huggingface.co/datasets/{target}"
    exported.save_to_disk(target)
    return target
