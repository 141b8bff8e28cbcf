"""Fashion-MNIST-LT, the embedded default: the long-tailed profile, disjoint splits, and the Hub fallback."""
import numpy as np
import pytest

from cadel_modeling.config import RunConfig
from cadel_modeling.data import build_datasets, fashion_mnist, long_tailed_counts, subsample_long_tailed

from conftest import requires_fashion_mnist


def test_profile_counts_for_the_defaults():
    # n_i = int(500 * (1/100)^(i/9)), computed by hand for i = 0..9
    assert long_tailed_counts(500, 10, 100) == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert long_tailed_counts(500, 10, 100, "step") == [500] * 5 + [5] * 5
    with pytest.raises(ValueError, match="n_max/n_min"):
        long_tailed_counts(500, 10, 0.01)


def test_subsampling_is_seeded_without_replacement_and_val_is_disjoint():
    labels = np.repeat(np.arange(3), 50)
    train, val = subsample_long_tailed(labels, [40, 10, 2], seed=0, val_per_class=5)
    assert np.bincount(labels[train]).tolist() == [40, 10, 2] and np.bincount(labels[val]).tolist() == [5, 5, 5]
    assert len(set(train) | set(val)) == len(train) + len(val)  # no image twice
    again, _ = subsample_long_tailed(labels, [40, 10, 2], seed=0, val_per_class=5)
    other, _ = subsample_long_tailed(labels, [40, 10, 2], seed=1, val_per_class=5)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(ValueError, match="fewer than"):
        subsample_long_tailed(labels, [49, 1, 1], val_per_class=5)


@requires_fashion_mnist
def test_built_splits_match_the_profile_and_use_real_images():
    data = build_datasets(RunConfig(dataset="fashion_mnist_lt"))
    assert data.class_counts == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert len(data.train) == 1236 and len(data.splits["val"]) == 200 and len(data.splits["test"]) == 10000
    assert np.bincount(data.splits["val"]["label"]).tolist() == [20] * 10
    assert np.bincount(data.splits["test"]["label"]).tolist() == [1000] * 10
    image = data.train[0]["image"]
    assert image.size == (28, 28) and np.asarray(image).std() > 10  # a real picture, not a blank
    # validation images come from the unused training images: no pixel-identical overlap with the train split
    train_bytes = {np.asarray(im).tobytes() for im in data.train["image"]}
    assert not any(np.asarray(im).tobytes() in train_bytes for im in data.splits["val"]["image"])


def test_hub_fallback_when_no_idx_files(monkeypatch, tmp_path):
    """Without the Debian files, the same arrays come from the Hub dataset (mocked: tests are offline)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append(name)
        rng = np.random.RandomState(0)
        feats = Features({"image": Image(), "label": ClassLabel(names=fashion_mnist.CLASS_NAMES)})
        make = lambda n: Dataset.from_dict(  # noqa: E731
            {"image": [PILImage.fromarray(rng.randint(0, 255, (28, 28), dtype=np.uint8)) for _ in range(n)],
             "label": [i % 10 for i in range(n)]}, features=feats)
        return DatasetDict(train=make(1000), test=make(50))

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    data = build_datasets(RunConfig(dataset="fashion_mnist_lt", n_max=50, imb_factor=10, val_per_class=5))
    assert calls == [fashion_mnist.HUB_ID]
    assert data.class_counts == long_tailed_counts(50, 10, 10) and len(data.splits["test"]) == 50
    with pytest.raises(FileNotFoundError, match="no Fashion-MNIST idx files"):
        build_datasets(RunConfig(dataset="fashion_mnist_lt", data_dir=str(tmp_path)))
