"""Long-tailed datasets as Hugging Face datasets, one builder per benchmark, and their loaders.

Every builder returns a ``LongTailedData``: a training split, evaluation splits ("val", "test"), class names, the
normalisation, and notes that say how the splits were made. ``build_datasets`` checks the data before any training
starts (labels, empty classes, class count, missing image files), fills in the training counts per class (they give
the many/medium/few groups and the logit-adjustment prior, and are saved with the model) and, with ``streaming``,
turns the training split into a sharded, shuffled ``IterableDataset``.
"""
from .base import DataOptions, LongTailedData, count_labels, is_streamed, label_array
from .decoding import UnreadableImageError
from .long_tail import long_tailed_counts, subsample_long_tailed
from .registry import DATASET_BUILDERS, build_datasets
from .transforms import build_transform

__all__ = ["DataOptions", "LongTailedData", "DATASET_BUILDERS", "build_datasets", "build_transform",
           "long_tailed_counts", "subsample_long_tailed", "count_labels", "label_array", "is_streamed",
           "UnreadableImageError"]
