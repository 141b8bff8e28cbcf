"""Long-tail samplers for map-style and streamed datasets that stay consistent across processes.

CADEL itself trains with plain instance (shuffled) sampling; these samplers exist for the class-balanced and
square-root baselines (cRT-style re-sampling). Every random decision is a pure function of ``(seed, epoch)`` (and, for
streams, of the example's identity), so all processes of a distributed run agree without communicating.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

if TYPE_CHECKING:
    import datasets

CLASS_AWARE_MODES = ("class_balanced", "sqrt")
SAMPLER_CHOICES = ("instance",) + CLASS_AWARE_MODES


def _hash64(*parts: Any) -> int:
    """Stable 64-bit hash of ``parts`` (Python's ``hash`` is salted per process for strings, so unusable here).

    Parts are hashed by ``str`` so that ``5`` and ``np.int64(5)`` agree.
    """
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class ClassAwareSampler(Sampler[int]):
    """Draws dataset indices with replacement: first a class, then an image of that class uniformly.

    ``mode="class_balanced"`` picks each class with equal probability; ``mode="sqrt"`` picks class ``c`` with
    probability proportional to ``sqrt(n_c)``. A class with no image (a label value that never occurs in ``labels``)
    has probability 0 in both modes, so it is never drawn. ``num_samples`` defaults to ``len(labels)``, i.e. one epoch
    of the global dataset.

    The draw is global and identical in every process: it comes from a CPU ``torch.Generator`` seeded with
    ``(seed, epoch)``. With ``num_replicas > 1`` (hand-written DDP) the global list is padded by wrapping around, as
    ``DistributedSampler`` does, to a multiple of ``num_replicas``, and rank ``r`` takes positions
    ``r::num_replicas``; the ranks therefore partition the padded global draw and all have the same length.

    Under accelerate keep ``num_replicas=1``: ``accelerator.prepare`` wraps the batch sampler in ``BatchSamplerShard``,
    which hands each process its own batches of the identical global sequence. The prepared ``DataLoader`` calls
    ``set_epoch(n)`` on this sampler at the start of its ``n``-th full pass, overriding a direct ``set_epoch`` on the
    sampler; if the loop breaks before the loader is exhausted, call ``dataloader.set_epoch(epoch)`` on the prepared
    loader each epoch. The sampler deliberately has no ``generator`` attribute: accelerate takes over such an
    attribute (seeding it randomly when it is None), which would break the ``(seed, epoch)`` determinism.
    """

    def __init__(
        self,
        labels: Sequence[int],
        mode: str = "class_balanced",
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if mode not in CLASS_AWARE_MODES:
            raise ValueError(f"Unknown mode {mode!r}; choose one of {CLASS_AWARE_MODES}.")
        label_tensor = torch.as_tensor(np.asarray(labels), dtype=torch.long).flatten()
        if label_tensor.numel() == 0:
            raise ValueError("labels is empty; pass one class index per dataset example.")
        if label_tensor.min() < 0:
            raise ValueError(f"labels must be class indices >= 0, got {label_tensor.min().item()}.")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be a positive number of indices per epoch, got {num_samples}.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"Need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=} {rank=}.")

        self.mode = mode
        self.num_samples = len(label_tensor) if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank

        self.class_counts = torch.bincount(label_tensor)
        present = (self.class_counts > 0).double()
        weights = present if mode == "class_balanced" else self.class_counts.double().sqrt()
        self.class_probabilities = weights / weights.sum()
        # Indices grouped by class: class c owns indices_by_class[class_offsets[c] : class_offsets[c] + n_c].
        self._indices_by_class = torch.argsort(label_tensor, stable=True)
        self._class_offsets = torch.cumsum(self.class_counts, 0) - self.class_counts

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw ``__iter__`` returns; call it before every epoch."""
        self.epoch = epoch

    def global_indices(self) -> torch.Tensor:
        """The full, unsharded draw of ``num_samples`` indices for the current ``(seed, epoch)``."""
        generator = torch.Generator().manual_seed(_hash64(self.seed, self.epoch))
        classes = torch.multinomial(self.class_probabilities, self.num_samples, replacement=True, generator=generator)
        counts = self.class_counts[classes]
        uniform = torch.rand(self.num_samples, generator=generator, dtype=torch.float64)
        # min() guards against u * n rounding up to n for u just below 1.
        positions = torch.minimum((uniform * counts).long(), counts - 1)
        return self._indices_by_class[self._class_offsets[classes] + positions]

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        indices = self.global_indices()
        total = len(self) * self.num_replicas
        if total > self.num_samples:
            indices = indices.repeat(math.ceil(total / self.num_samples))[:total]
        return iter(indices[self.rank :: self.num_replicas].tolist())


def make_sampler(
    name: str, labels: Sequence[int], seed: int = 0, num_samples: int | None = None
) -> ClassAwareSampler | None:
    """Sampler for ``name``; ``"instance"`` returns ``None`` so the DataLoader shuffles plainly (CADEL's default)."""
    if name not in SAMPLER_CHOICES:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {SAMPLER_CHOICES}.")
    if name == "instance":
        return None
    return ClassAwareSampler(labels, mode=name, num_samples=num_samples, seed=seed)


def _keep_probabilities(class_counts: Sequence[int]) -> list[float]:
    counts = [int(count) for count in class_counts]
    if not counts or min(counts) < 0 or max(counts) == 0:
        raise ValueError("class_counts must be non-negative training-image counts with at least one positive entry.")
    rarest = min(count for count in counts if count > 0)
    return [rarest / count if count > 0 else 0.0 for count in counts]


def _is_kept(label: int, identity: Any, keep_probabilities: list[float], seed: int, epoch: int) -> bool:
    label = int(label)
    if not 0 <= label < len(keep_probabilities) or keep_probabilities[label] == 0.0:
        raise ValueError(f"Example has label {label}, which class_counts counts as 0 images; recount class_counts.")
    return _hash64(seed, epoch, identity) / 2**64 < keep_probabilities[label]


def _is_kept_keyed(
    example: dict, key: str, label_key: str, keep_probabilities: list[float], seed: int, epoch: int
) -> bool:
    return _is_kept(example[label_key], example[key], keep_probabilities, seed, epoch)


def class_balanced_stream(
    examples: Iterable[dict],
    class_counts: Sequence[int],
    seed: int = 0,
    label_key: str = "label",
    key: str | None = None,
    epoch: int = 0,
) -> Iterator[dict]:
    """Rejection-sample a stream so kept examples are class-balanced in expectation.

    An example of class ``c`` is kept with probability ``min_count / n_c`` (``min_count`` = smallest non-zero count),
    so every class contributes ``min_count`` examples per pass in expectation. The keep decision hashes
    ``(seed, epoch, identity)``, where identity is ``example[key]`` or, when ``key`` is None, the example's position
    in ``examples``; change ``epoch`` to keep a different subset.
    """
    keep_probabilities = _keep_probabilities(class_counts)
    for position, example in enumerate(examples):
        identity = position if key is None else example[key]
        if _is_kept(example[label_key], identity, keep_probabilities, seed, epoch):
            yield example


def class_balanced_filter(
    dataset: "datasets.IterableDataset",
    class_counts: Sequence[int],
    key: str,
    seed: int = 0,
    label_key: str = "label",
    epoch: int = 0,
) -> "datasets.IterableDataset":
    """``class_balanced_stream`` for a streamed ``datasets.IterableDataset``, as a lazy ``IterableDataset.filter``.

    The result is still a ``datasets.IterableDataset``, so ``split_dataset_by_node`` and accelerate's shard logic apply
    to it unchanged. The keep decision hashes the example's own ``key`` column (e.g. an image id or path) rather than a
    running counter, because positions restart on every node and DataLoader worker after sharding; this way the
    examples kept by all nodes together are exactly those a single process keeps, whichever way the stream is split.
    The filter is a module-level function with keyword arguments, so the dataset pickles into DataLoader workers.
    """
    fn_kwargs = dict(
        key=key, label_key=label_key, keep_probabilities=_keep_probabilities(class_counts), seed=seed, epoch=epoch
    )
    return dataset.filter(_is_kept_keyed, fn_kwargs=fn_kwargs)
