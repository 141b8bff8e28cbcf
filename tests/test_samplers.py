"""Behaviour of the long-tail samplers: target class frequencies, determinism, and sharding across processes."""

import math

import numpy as np
import pytest
from scipy import stats
from torch.utils.data import DataLoader

from cadel_modeling.samplers import (
    ClassAwareSampler,
    class_balanced_filter,
    class_balanced_stream,
    make_sampler,
)

INAT_NUM_IMAGES = 437_513
INAT_NUM_CLASSES = 8_142


def long_tail_counts(num_classes: int, head: int, tail: int) -> np.ndarray:
    """Exponentially decaying class sizes from ``head`` down to ``tail`` images."""
    return np.round(head * (tail / head) ** (np.arange(num_classes) / (num_classes - 1))).astype(np.int64)


def shuffled_labels(counts: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))


def assert_counts_match(observed: np.ndarray, probabilities: np.ndarray) -> None:
    """Observed multinomial counts agree with ``probabilities``: chi-square test and a per-cell binomial bound."""
    total = observed.sum()
    expected = total * probabilities
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    binomial_std = np.sqrt(total * probabilities * (1 - probabilities))
    assert np.max(np.abs(observed - expected) / binomial_std) < 5.5


@pytest.mark.parametrize("mode", ["class_balanced", "sqrt"])
def test_class_frequencies_match_target_on_inat_scale(mode):
    counts = long_tail_counts(INAT_NUM_CLASSES, head=1000, tail=2)
    labels = shuffled_labels(counts)
    sampler = ClassAwareSampler(labels, mode=mode, num_samples=INAT_NUM_IMAGES, seed=1)

    drawn_classes = labels[np.fromiter(iter(sampler), dtype=np.int64)]

    weights = np.ones(len(counts)) if mode == "class_balanced" else np.sqrt(counts)
    target = weights / weights.sum()
    np.testing.assert_allclose(sampler.class_probabilities.numpy(), target, rtol=1e-12)
    assert len(drawn_classes) == INAT_NUM_IMAGES
    assert_counts_match(np.bincount(drawn_classes, minlength=len(counts)), target)


@pytest.mark.parametrize("mode", ["class_balanced", "sqrt"])
def test_images_within_a_class_are_drawn_uniformly(mode):
    labels = shuffled_labels(np.array([40, 3, 17]), seed=2)
    indices = np.fromiter(iter(ClassAwareSampler(labels, mode=mode, num_samples=120_000, seed=3)), dtype=np.int64)

    for label in range(3):
        members = np.flatnonzero(labels == label)
        draws_per_member = np.bincount(indices, minlength=len(labels))[members]
        assert draws_per_member.sum() == np.isin(indices, members).sum()
        assert_counts_match(draws_per_member, np.full(len(members), 1 / len(members)))


def test_draw_is_deterministic_given_seed_and_epoch():
    labels = shuffled_labels(np.array([50, 20, 5, 1]))
    first, second = ClassAwareSampler(labels, seed=7), ClassAwareSampler(labels, seed=7)
    first.set_epoch(3)
    second.set_epoch(3)
    epoch_3 = list(first)

    assert list(second) == epoch_3
    assert list(first) == epoch_3  # iterating again does not advance the epoch
    first.set_epoch(4)
    assert list(first) != epoch_3
    other_seed = ClassAwareSampler(labels, seed=8)
    other_seed.set_epoch(3)
    assert list(other_seed) != epoch_3


@pytest.mark.parametrize(("num_samples", "num_replicas"), [(1000, 2), (1001, 2), (7, 3), (2, 4)])
def test_replicas_partition_the_padded_global_draw(num_samples, num_replicas):
    labels = shuffled_labels(np.array([30, 10, 4]))
    global_draw = list(ClassAwareSampler(labels, mode="sqrt", num_samples=num_samples, seed=5))
    shards = [
        list(ClassAwareSampler(labels, "sqrt", num_samples, seed=5, num_replicas=num_replicas, rank=rank))
        for rank in range(num_replicas)
    ]

    per_rank = math.ceil(num_samples / num_replicas)
    assert [len(shard) for shard in shards] == [per_rank] * num_replicas
    interleaved = [shard[i] for i in range(per_rank) for shard in shards]
    padded_global = (global_draw * num_replicas)[: per_rank * num_replicas]
    assert interleaved == padded_global


def test_accelerate_gives_each_process_alternate_global_batches():
    from accelerate.data_loader import prepare_data_loader

    labels = shuffled_labels(np.array([60, 25, 8, 3]))
    batch_size = 8

    def loader() -> DataLoader:
        return DataLoader(list(range(len(labels))), batch_size=batch_size, sampler=ClassAwareSampler(labels, seed=11))

    def batches(dataloader) -> list[list[int]]:
        return [batch.tolist() for batch in dataloader]

    global_batches = batches(loader())
    assert len(global_batches) == len(labels) // batch_size and len(global_batches) % 2 == 0
    prepared = [prepare_data_loader(loader(), num_processes=2, process_index=rank) for rank in range(2)]

    halves = [batches(dataloader) for dataloader in prepared]
    assert halves[0] == global_batches[0::2]
    assert halves[1] == global_batches[1::2]

    reference = ClassAwareSampler(labels, seed=11)
    reference.set_epoch(3)
    epoch_3 = list(reference)
    global_batches_3 = [epoch_3[start : start + batch_size] for start in range(0, len(epoch_3), batch_size)]
    for rank, dataloader in enumerate(prepared):
        dataloader.set_epoch(3)
        assert batches(dataloader) == global_batches_3[rank::2]


def long_tail_stream(counts: np.ndarray) -> list[dict]:
    return [{"id": f"img{i}", "label": int(label)} for i, label in enumerate(shuffled_labels(counts, seed=4))]


def test_class_balanced_stream_balances_a_long_tailed_stream():
    counts = np.array([20_000, 5_000, 1_000, 200])
    examples = long_tail_stream(counts)

    kept = list(class_balanced_stream(examples, counts, seed=0))

    kept_counts = np.bincount([example["label"] for example in kept], minlength=len(counts))
    keep_probability = counts.min() / counts
    expected = counts * keep_probability
    binomial_std = np.sqrt(counts * keep_probability * (1 - keep_probability))
    assert np.all(np.abs(kept_counts - expected) <= 5 * binomial_std)
    assert kept_counts[-1] == counts[-1]  # the rarest class is always kept
    assert list(class_balanced_stream(examples, counts, seed=0)) == kept
    assert list(class_balanced_stream(examples, counts, seed=1)) != kept
    assert list(class_balanced_stream(examples, counts, seed=0, epoch=1)) != kept


def test_class_balanced_filter_keeps_the_same_examples_however_the_stream_is_split():
    from datasets import Dataset
    from datasets.distributed import split_dataset_by_node

    counts = np.array([900, 300, 60, 20])
    examples = long_tail_stream(counts)
    expected_ids = [example["id"] for example in class_balanced_stream(examples, counts, seed=2, key="id")]
    streamed = Dataset.from_list(examples).to_iterable_dataset(num_shards=4)

    filtered = class_balanced_filter(streamed, counts, key="id", seed=2)

    assert [example["id"] for example in filtered] == expected_ids
    for world_size in (2, 3):  # 4 shards: split by shards for 2 nodes, by examples for 3
        per_node = [
            [example["id"] for example in split_dataset_by_node(filtered, rank=rank, world_size=world_size)]
            for rank in range(world_size)
        ]
        assert sorted(sum(per_node, [])) == sorted(expected_ids)


def test_class_with_no_images_is_never_drawn():
    labels = [0, 0, 0, 2, 2, 2, 2, 2, 2]  # class 1 has no image
    balanced = ClassAwareSampler(labels, "class_balanced", num_samples=2000)
    sqrt = ClassAwareSampler(labels, "sqrt", num_samples=2000)

    np.testing.assert_allclose(balanced.class_probabilities.numpy(), [0.5, 0.0, 0.5])
    np.testing.assert_allclose(sqrt.class_probabilities.numpy(), np.array([3**0.5, 0, 6**0.5]) / (3**0.5 + 6**0.5))
    for sampler in (balanced, sqrt):
        assert set(np.asarray(labels)[list(sampler)]) == {0, 2}


def test_make_sampler():
    labels = [0, 1, 1, 2]
    assert make_sampler("instance", labels) is None
    sampler = make_sampler("sqrt", labels, seed=3, num_samples=10)
    assert isinstance(sampler, ClassAwareSampler)
    assert (sampler.mode, sampler.seed, len(sampler)) == ("sqrt", 3, 10)
    with pytest.raises(ValueError, match="instance.*class_balanced.*sqrt"):
        make_sampler("balanced", labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(labels=[0, 1], mode="uniform"), "Unknown mode"),
        (dict(labels=[]), "labels is empty"),
        (dict(labels=[0, -1]), ">= 0"),
        (dict(labels=[0, 1], num_samples=0), "num_samples"),
        (dict(labels=[0, 1], num_replicas=2, rank=2), "rank"),
    ],
)
def test_bad_sampler_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassAwareSampler(**kwargs)


def test_stream_rejects_labels_missing_from_class_counts():
    with pytest.raises(ValueError, match="label 2"):
        list(class_balanced_stream([{"label": 0}, {"label": 2}], class_counts=[5, 1]))
    with pytest.raises(ValueError, match="class_counts"):
        list(class_balanced_stream([{"label": 0}], class_counts=[0, 0]))
