"""Streamed training splits: each process reads a disjoint part, together every image exactly once per epoch."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_builders import config, corrupt, shade_of, write_split_lists

from cadel_modeling.data import build_datasets, is_streamed
from cadel_modeling.data.loaders import LoaderSpec, build_train_loader, streamed_steps_per_epoch
from cadel_modeling.data.streaming import split_for_process

COUNTS = [14, 10, 6, 4, 2]     # 36 training images


def streamed_ids(cfg, data, rank, num_processes, epoch):
    loader = build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=num_processes, process_index=rank)
    loader.dataset.set_epoch(epoch)
    return [s for batch in loader for s in shade_of(batch["pixel_values"], data.mean, data.std)]


def test_two_processes_read_each_image_exactly_once_per_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    write_split_lists(tmp_path, COUNTS)
    cfg = config(tmp_path, streaming=True, shuffle_buffer=8, batch_size=2, num_workers=2)  # 1 image per process
    data = build_datasets(cfg)
    assert is_streamed(data.train) and data.train.num_shards % 2 == 0
    assert data.class_counts == COUNTS                # from the split list, without reading the stream
    orders = []
    for epoch in (0, 1):
        parts = [streamed_ids(cfg, data, rank, 2, epoch) for rank in (0, 1)]
        assert sorted(parts[0] + parts[1]) == list(range(36))
        assert not set(parts[0]) & set(parts[1])
        orders.append(parts[0])
    assert orders[0] != orders[1]                     # set_epoch reshuffles


def test_steps_per_epoch_is_reached_by_every_process(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    write_split_lists(tmp_path, COUNTS)
    cfg = config(tmp_path, streaming=True, shuffle_buffer=8, batch_size=6, num_workers=2)
    data = build_datasets(cfg)
    steps = streamed_steps_per_epoch(data, LoaderSpec.from_config(cfg), num_processes=2)
    spec = LoaderSpec.from_config(cfg)
    batches = [len(list(build_train_loader(data, spec, num_processes=2, process_index=rank))) for rank in (0, 1)]
    assert 1 <= steps <= min(batches)


def test_shard_count_not_dividing_the_processes_warns_and_stays_exact(caplog):
    from datasets import Dataset
    stream = Dataset.from_dict({"i": np.arange(30)}).to_iterable_dataset(num_shards=3).shuffle(seed=0, buffer_size=4)
    with caplog.at_level(logging.WARNING):
        parts = [[row["i"] for row in split_for_process(stream, rank, 2)] for rank in (0, 1)]
    assert "3 shards, not a multiple of the 2 processes" in caplog.text
    assert sorted(parts[0] + parts[1]) == list(range(30)) and not set(parts[0]) & set(parts[1])


def test_accelerate_must_treat_the_split_stream_as_one_process(tmp_path):
    """Why stage 1 prepares a streamed loader with num_processes=1: accelerate's own sharding would split the
    already split stream again and drop half of each process's images."""
    from accelerate.data_loader import prepare_data_loader
    from datasets import Dataset
    from torch.utils.data import DataLoader
    stream = Dataset.from_dict({"i": np.arange(32)}).to_iterable_dataset(num_shards=8)
    ours, resharded = [], []
    for rank in (0, 1):
        loader = DataLoader(split_for_process(stream, rank, 2), batch_size=4)
        single = prepare_data_loader(loader, torch.device("cpu"), num_processes=1, process_index=0,
                                     put_on_device=True, dispatch_batches=False)
        ours += [int(i) for batch in single for i in batch["i"]]
        again = prepare_data_loader(loader, torch.device("cpu"), num_processes=2, process_index=rank,
                                    put_on_device=True, dispatch_batches=False)
        resharded += [int(i) for batch in again for i in batch["i"]]
    assert sorted(ours) == list(range(32))
    assert len(resharded) == 16


def test_streamed_corrupt_image_is_dropped_in_skip_mode(tmp_path):
    lines = write_split_lists(tmp_path, COUNTS)
    corrupt(tmp_path / lines["train"][5][0])
    cfg = config(tmp_path, streaming=True, batch_size=1, bad_image_policy="skip")
    data = build_datasets(cfg)
    ids = streamed_ids(cfg, data, 0, 1, epoch=0)
    assert sorted(ids) == [i for i in range(36) if i != 5] and int(data.skipped_images) == 1


def test_streaming_refuses_index_samplers(tmp_path):
    write_split_lists(tmp_path, COUNTS)
    cfg = config(tmp_path, streaming=True, sampler="class_balanced")
    with pytest.raises(ValueError, match="--sampler instance with --streaming"):
        build_train_loader(build_datasets(cfg), LoaderSpec.from_config(cfg), num_processes=1, process_index=0)


def write_parquet_dataset(root, labels_per_file):
    """A Hub-style data folder: ``data/<split>-0000k-of-0000n.parquet`` with JPEG bytes embedded."""
    import io

    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"])})
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (50, 0, 0)).save(buffer, format="JPEG")
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, files in labels_per_file.items():
        for k, labels in enumerate(files):
            cells = [{"bytes": buffer.getvalue(), "path": None} for _ in labels]
            Dataset.from_dict({"image": cells, "label": labels}, features=features).to_parquet(
                str(root / "data" / f"{split}-{k:05d}-of-{len(files):05d}.parquet"))


def test_hub_dataset_streamed_with_counts_from_a_count_file_or_one_label_pass(tmp_path, monkeypatch):
    from cadel_modeling.data import user_data
    write_parquet_dataset(tmp_path / "hubdata", {"train": [[0, 0, 0, 1], [0, 1, 2, 0]], "validation": [[0, 1, 2]]})
    cfg = config(tmp_path, dataset="hub", hub_dataset_id=str(tmp_path / "hubdata"), streaming=True, batch_size=2,
                 data_dir=None)
    data = build_datasets(cfg)
    assert is_streamed(data.train) and data.train.num_shards == 2
    assert data.class_counts == [5, 2, 1] and data.class_names == ["a", "b", "c"]
    assert len(data.splits["val"]) == 3 and data.splits["test"] is data.splits["val"]
    batch = next(iter(build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1, process_index=0)))
    assert batch["pixel_values"].shape == (2, 3, 16, 16)

    np.savez(tmp_path / "num_shots.npz", num_per_class=np.asarray([5, 2, 1], dtype=np.float32))
    monkeypatch.setattr(user_data, "count_stream_labels", lambda *a: pytest.fail("read the stream for counts"))
    data = build_datasets(config(tmp_path, dataset="hub", hub_dataset_id=str(tmp_path / "hubdata"), streaming=True))
    assert data.class_counts == [5, 2, 1] and any("num_shots.npz" in note for note in data.notes)


SCRIPT = """
import sys
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import gather_object
from cadel_modeling.config import RunConfig
from cadel_modeling.data import build_datasets
from cadel_modeling.data.loaders import LoaderSpec, build_train_loader
from test_data_builders import shade_of
accelerator = Accelerator()
cfg = RunConfig(dataset="imagenet_lt", data_dir=sys.argv[1], image_size=16, augmentation="none", batch_size=2,
                num_workers=1, streaming=True, shuffle_buffer=8)
data = build_datasets(cfg)
loader = prepare_data_loader(build_train_loader(data, LoaderSpec.from_config(cfg), accelerator.num_processes),
                             accelerator.device, num_processes=1, process_index=0, put_on_device=True,
                             dispatch_batches=False)
for epoch in (0, 1):
    loader.set_epoch(epoch)
    ids = [s for batch in loader for s in shade_of(batch["pixel_values"], data.mean, data.std)]
    everyone = gather_object([ids])
    if accelerator.is_main_process:
        print("EPOCH", epoch, sorted(i for part in everyone for i in part), len(everyone), flush=True)
"""


@pytest.mark.slow
def test_accelerate_launch_with_two_processes_reads_each_image_once(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    write_split_lists(tmp_path, COUNTS)
    (tmp_path / "run.py").write_text(SCRIPT)
    # ACCELERATE_USE_CPU: without it accelerate 1.15 starts the config's 2 processes as 2 separate 1-process runs
    env = {**os.environ, "PYTHONPATH": f"{repo / 'tests'}:{repo}", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                             str(repo / "accelerate_configs" / "cpu_2proc.yaml"), str(tmp_path / "run.py"),
                             str(tmp_path)], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [line for line in result.stdout.splitlines() if line.startswith("EPOCH")]
    assert epochs == [f"EPOCH {e} {list(range(36))} 2" for e in (0, 1)]
