"""Class-aware samplers (class-balanced, square-root) that stay consistent across processes.

CADEL itself trains with plain instance (shuffled) sampling; these samplers serve the class-balanced and square-root
baselines and cRT. Every random decision is a pure function of ``(seed, epoch)``, so all processes of a distributed
run agree without communicating.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

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
    ``(seed, epoch)``. ``accelerator.prepare`` wraps the batch sampler in ``BatchSamplerShard``, which hands each
    process its own batches of the identical global sequence. The prepared ``DataLoader`` calls
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

        self.mode = mode
        self.num_samples = len(label_tensor) if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0

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
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_indices().tolist())


def make_sampler(
    name: str, labels: Sequence[int], *, seed: int, num_samples: int | None = None
) -> ClassAwareSampler | None:
    """Sampler for ``name``; ``"instance"`` returns ``None`` so the DataLoader shuffles plainly (CADEL's default)."""
    if name not in SAMPLER_CHOICES:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {SAMPLER_CHOICES}.")
    if name == "instance":
        return None
    return ClassAwareSampler(labels, mode=name, num_samples=num_samples, seed=seed)
