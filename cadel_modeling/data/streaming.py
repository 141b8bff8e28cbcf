"""Streamed training splits (``datasets.IterableDataset``) that every process reads a disjoint part of.

The split is cut into shards, a multiple of the world size times the DataLoader workers, so
``split_dataset_by_node`` hands each process whole shards and each worker whole shards of those. The shard order and
the shuffle buffer are seeded with the run seed plus the epoch (``set_epoch``), identically on every process, so the
processes together read every example exactly once per epoch.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

SHARD_ORDER_FACTORS = (8, 4, 2, 1)   # several shards per worker, so the shard order can change between epochs


def world_size() -> int:
    """Processes of the run as ``accelerate launch`` / ``torchrun`` export them (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def default_num_shards(num_examples: int, num_processes: int, num_workers: int) -> int:
    """A multiple of ``num_processes x workers`` (8x when there are enough examples), never above ``num_examples``."""
    base = num_processes * max(1, num_workers)
    for factor in SHARD_ORDER_FACTORS:
        if base * factor <= num_examples:
            return base * factor
    return num_processes if num_processes <= num_examples else 1


def stream_train_split(train, opts, num_processes: int = 0):
    """A map-style training split as a shuffled ``IterableDataset``.

    The rows are shuffled once first: split lists are sorted by class, and contiguous shards of sorted rows would fill
    the shuffle buffer with one class at a time.
    """
    shards = default_num_shards(len(train), num_processes or world_size(), opts.num_workers)
    stream = train.shuffle(seed=opts.seed).to_iterable_dataset(num_shards=shards)
    return stream.shuffle(seed=opts.seed, buffer_size=opts.shuffle_buffer)


def split_for_process(stream, process_index: int, num_processes: int):
    """This process's part of ``stream`` (``split_dataset_by_node``): whole shards when the shard count divides by
    ``num_processes``; otherwise every process reads all the data and keeps one example in ``num_processes``."""
    if num_processes == 1:
        return stream
    from datasets.distributed import split_dataset_by_node
    if stream.num_shards % num_processes:
        logger.warning("the streamed train split has %d shards, not a multiple of the %d processes: each process reads "
                       "all the data and keeps 1 example in %d (slower). Re-shard the data into a multiple of %d "
                       "files for speed", stream.num_shards, num_processes, num_processes, num_processes)
    return split_dataset_by_node(stream, rank=process_index, world_size=num_processes)


def min_examples_per_process(num_examples: int, num_shards: int, num_processes: int, num_workers: int) -> int:
    """Fewest examples any process gets in an epoch. Whole shards (``num_shards % num_processes == 0``): the shards
    are contiguous slices of at least ``num_examples // num_shards`` rows (exact for splits streamed by
    ``stream_train_split``, an estimate for a Hub dataset's files). Otherwise each worker keeps every
    ``num_processes``-th example of its shards."""
    if num_shards % num_processes == 0:
        return num_shards // num_processes * (num_examples // num_shards)
    return (num_examples - max(1, num_workers) * (num_processes - 1)) // num_processes
