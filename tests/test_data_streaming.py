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


# The shard arithmetic and the shuffle's seed, pinned without launching processes (the launches above are slow)

@pytest.mark.parametrize("num_examples, num_processes, num_workers, expected", [
    (100, 1, 0, 8),     # no worker processes count as one reader: 1 x 8
    (10, 2, 1, 8),      # 2 x 8 = 16 > 10, 2 x 4 = 8 fits
    (16, 2, 1, 16),     # exactly enough for 2 x 8
    (36, 3, 2, 24),     # base 6: 48 > 36, 24 fits
    (5, 2, 2, 4),       # base 4: only 4 x 1 fits
    (3, 2, 2, 2),       # not even one shard per worker: one per process
    (2, 2, 2, 2),       # exactly one example per process: one shard each
    (1, 2, 2, 1),       # fewer examples than processes: one shard
])
def test_default_shard_count_is_the_largest_multiple_of_processes_times_workers_that_fits(
        num_examples, num_processes, num_workers, expected):
    from cadel_modeling.data.streaming import default_num_shards
    assert default_num_shards(num_examples, num_processes, num_workers) == expected


@pytest.mark.parametrize("num_examples, num_shards, num_processes, num_workers, expected", [
    (100, 8, 2, 1, 48),   # whole shards: 4 shards each of at least 100 // 8 = 12 rows
    (100, 9, 3, 2, 33),   # 3 shards each of at least 11
    (100, 3, 2, 1, 49),   # not dividing: every 2nd example, one worker short by 1: (100 - 1) // 2
    (101, 3, 2, 4, 48),   # 4 workers each short by 1: (101 - 4) // 2
    (100, 6, 4, 3, 22),   # (100 - 3 x 3) // 4 = 91 // 4
    (101, 3, 2, 0, 50),   # no worker processes: one reader, short by 1: (101 - 1) // 2
])
def test_fewest_examples_per_process_is_exact_and_an_int(num_examples, num_shards, num_processes, num_workers,
                                                         expected):
    from cadel_modeling.data.streaming import min_examples_per_process
    got = min_examples_per_process(num_examples, num_shards, num_processes, num_workers)
    assert got == expected and type(got) is int     # a step count: 48.0 would break range()


def test_world_size_is_read_from_the_launchers_environment(monkeypatch):
    from cadel_modeling.data.streaming import world_size
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert world_size() == 3
    monkeypatch.delenv("WORLD_SIZE")
    assert world_size() == 1


def test_the_shard_count_divides_by_the_launched_processes(monkeypatch):
    from types import SimpleNamespace

    from datasets import Dataset

    from cadel_modeling.data.streaming import stream_train_split
    monkeypatch.setenv("WORLD_SIZE", "3")
    train = Dataset.from_dict({"i": np.arange(36)})
    stream = stream_train_split(train, SimpleNamespace(seed=0, num_workers=2, shuffle_buffer=4))
    assert stream.num_shards == 24                  # 3 processes x 2 workers x 4 (x 8 = 48 > 36 rows)


def test_a_split_shard_count_warns_with_the_fix_and_a_dividing_one_does_not(caplog):
    from datasets import Dataset
    rows = Dataset.from_dict({"i": np.arange(12)})
    with caplog.at_level(logging.WARNING):
        split_for_process(rows.to_iterable_dataset(num_shards=4), 1, 2)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING):
        split_for_process(rows.to_iterable_dataset(num_shards=3), 1, 2)
    assert [r.getMessage() for r in caplog.records] == [
        "the streamed train split has 3 shards, not a multiple of the 2 processes: each process reads all the data "
        "and keeps 1 example in 2 (slower). Re-shard the data into a multiple of 2 files for speed"]


def stream_order(seed, shuffle_buffer, epoch=0):
    from types import SimpleNamespace

    from datasets import Dataset

    from cadel_modeling.data.streaming import stream_train_split
    train = Dataset.from_dict({"i": np.arange(36)})
    stream = stream_train_split(train, SimpleNamespace(seed=seed, num_workers=1, shuffle_buffer=shuffle_buffer),
                                num_processes=1)
    stream.set_epoch(epoch)
    return [row["i"] for row in stream], stream.num_shards


def test_the_streams_order_is_a_function_of_the_seed_and_the_epoch():
    order, shards = stream_order(seed=0, shuffle_buffer=8)
    assert sorted(order) == list(range(36)) and shards == 8
    assert stream_order(seed=0, shuffle_buffer=8)[0] == order            # the same on every process
    assert stream_order(seed=1, shuffle_buffer=8)[0] != order
    assert stream_order(seed=0, shuffle_buffer=8, epoch=1)[0] != order


def test_the_rows_are_shuffled_with_the_seed_before_being_cut_into_shards_and_the_buffer_is_the_configured_one():
    """With a buffer of 1 the stream only interleaves its shards: each shard, a contiguous slice of the rows shuffled
    with the run seed (``train.shuffle(seed)``), comes out in its own order. A larger buffer, or rows shuffled with
    another seed, scramble the rows within the slices."""
    from datasets import Dataset
    order, shards = stream_order(seed=5, shuffle_buffer=1)
    position = {v: k for k, v in enumerate(Dataset.from_dict({"i": np.arange(36)}).shuffle(seed=5)["i"])}
    assert sorted(order) == list(range(36)) and shards == 8
    for piece in np.array_split(np.arange(36), 8):      # 5, 5, 5, 5, 4, 4, 4, 4 rows
        in_piece = [position[i] for i in order if position[i] in piece]
        assert in_piece == list(piece)
    assert stream_order(seed=5, shuffle_buffer=1)[0] == order
