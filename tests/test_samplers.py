"""Behaviour of the long-tail samplers: target class frequencies, determinism, and sharding across processes."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader

from cadel_modeling.data.samplers import ClassAwareSampler, make_sampler

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
    assert make_sampler("instance", labels, seed=0) is None
    sampler = make_sampler("sqrt", labels, seed=3, num_samples=10)
    assert isinstance(sampler, ClassAwareSampler)
    assert (sampler.mode, sampler.seed, len(sampler)) == ("sqrt", 3, 10)
    with pytest.raises(ValueError, match="instance.*class_balanced.*sqrt"):
        make_sampler("balanced", labels, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(labels=[0, 1], mode="uniform"), "Unknown mode"),
        (dict(labels=[]), "labels is empty"),
        (dict(labels=[0, -1]), ">= 0"),
        (dict(labels=[0, 1], num_samples=0), "num_samples"),
    ],
)
def test_bad_sampler_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassAwareSampler(**kwargs)


def test_the_draw_follows_its_specification_exactly():
    """(seed, epoch) -> blake2b seed of a CPU generator -> classes by multinomial -> a float64 uniform position in
    the class's images, in dataset order. Written out here independently, so a resumed run on a newer cadel (or
    another machine) is guaranteed the same indices."""
    import hashlib
    labels = [2, 0, 2, 1, 0, 2, 2, 1, 0, 2, 3]
    sampler = ClassAwareSampler(labels, mode="sqrt", num_samples=40, seed=5)
    sampler.set_epoch(3)
    counts = torch.tensor([3, 2, 5, 1])
    probs = counts.double().sqrt() / counts.double().sqrt().sum()
    seed = int.from_bytes(hashlib.blake2b(b"5\x1f3", digest_size=8).digest(), "little")
    gen = torch.Generator().manual_seed(seed)
    classes = torch.multinomial(probs, 40, replacement=True, generator=gen).tolist()
    uniform = torch.rand(40, generator=gen, dtype=torch.float64).tolist()
    members = {c: [i for i, y in enumerate(labels) if y == c] for c in range(4)}
    expected = [members[c][int(u * len(members[c]))] for c, u in zip(classes, uniform)]
    assert list(sampler) == expected
    assert list(ClassAwareSampler(labels, mode="sqrt", num_samples=40)) == \
        list(ClassAwareSampler(labels, mode="sqrt", num_samples=40, seed=0))   # the default seed is 0


def test_sampler_edge_cases():
    with pytest.raises(ValueError) as exc:
        ClassAwareSampler([])
    assert str(exc.value) == "labels is empty; pass one class index per dataset example."
    assert len(ClassAwareSampler([0, 1], num_samples=1)) == 1
    single = ClassAwareSampler([0, 0, 0, 1], mode="class_balanced")   # a class with one image is still drawn
    np.testing.assert_allclose(single.class_probabilities.numpy(), [0.5, 0.5])
