"""CIFAR-LT: the LDAM-DRW profile's published sizes, and the exact LDAM subset from (synthetic) CIFAR python pickles."""
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from cadel_modeling.config import RunConfig
from cadel_modeling.data import build_datasets, long_tailed_counts
from cadel_modeling.data.loaders import LoaderSpec, build_train_loader


@pytest.mark.parametrize("n_max, num_classes, imb_factor, total, many_medium_few", [
    (5000, 10, 100, 12406, (8, 2, 0)), (5000, 10, 50, 13996, (9, 1, 0)), (5000, 10, 10, 20431, (10, 0, 0)),
    (500, 100, 100, 10847, (35, 35, 30)), (500, 100, 50, 12608, (41, 41, 18)), (500, 100, 10, 19573, (69, 31, 0)),
])
def test_published_cifar_lt_sizes(n_max, num_classes, imb_factor, total, many_medium_few):
    counts = np.asarray(long_tailed_counts(n_max, num_classes, imb_factor, "exp"))
    assert counts.sum() == total and counts[0] == n_max and counts[-1] == n_max // imb_factor
    assert ((counts > 100).sum(), ((counts >= 20) & (counts <= 100)).sum(), (counts < 20).sum()) == many_medium_few


def test_step_profile():
    assert long_tailed_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5


def write_cifar10_pickles(root, per_class=30, test_per_class=4):
    """A CIFAR-10-format folder of random images, labels in a shuffled order as in the real batches."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    images = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
    halves = np.array_split(np.arange(len(labels)), 5)
    for i, part in enumerate(halves, 1):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": images[part], b"labels": labels[part].tolist()}, fh)
    test_labels = np.repeat(np.arange(10), test_per_class)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": rng.integers(0, 256, (len(test_labels), 3072), dtype=np.uint8),
                     b"labels": test_labels.tolist()}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"class{c}".encode() for c in range(10)]}, fh)
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def ldam_reference(labels, counts):
    """LDAM-DRW's ``gen_imbalanced_data``: global np.random.seed(0), then per class in label order a shuffle."""
    np.random.seed(0)
    chosen = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        chosen.append(idx[:n])
    return np.concatenate(chosen)


def pixels(dataset):
    return np.stack([np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
                     for row in dataset.cast_column("image", type(dataset.features["image"])(decode=False))])


def test_cifar10_lt_from_pickles_is_ldams_subset_whatever_the_run_seed(tmp_path):
    images, labels = write_cifar10_pickles(tmp_path)
    counts = long_tailed_counts(25, 10, 10)
    for run_seed in (0, 7):
        cfg = RunConfig(dataset="cifar10_lt", data_dir=str(tmp_path), n_max=25, imb_factor=10, val_per_class=3,
                        seed=run_seed, augmentation="small", image_size=32, batch_size=8, num_workers=0)
        data = build_datasets(cfg)
        expected = ldam_reference(labels, counts)
        assert data.class_counts == counts and data.class_names[3] == "class3"
        np.testing.assert_array_equal(pixels(data.train), images[expected])
        assert data.train["label"] == labels[expected].tolist()
    val = pixels(data.splits["val"]).reshape(30, -1)
    train_rows = {row.tobytes() for row in images[expected].reshape(len(expected), -1)}
    assert len(val) == 30 and not any(row.tobytes() in train_rows for row in val)
    assert len(data.splits["test"]) == 40
    batch = next(iter(build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1)))
    assert batch["pixel_values"].shape == (8, 3, 32, 32)


def test_cifar_val_is_the_test_set_when_no_val_is_carved(tmp_path):
    write_cifar10_pickles(tmp_path)
    data = build_datasets(RunConfig(dataset="cifar10_lt", data_dir=str(tmp_path), n_max=25, imb_factor=10,
                                    val_per_class=0))
    assert data.splits["val"] is data.splits["test"]
    assert any("val = the test set, as the community does" in note for note in data.notes)


def test_cifar100_lt_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    labels = np.repeat(np.arange(100), 4)
    for name, n in (("train", len(labels)), ("test", 100)):
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": (labels if name == "train" else np.arange(100)).tolist(),
                         b"coarse_labels": [0] * n}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"fine{c}".encode() for c in range(100)]}, fh)
    data = build_datasets(RunConfig(dataset="cifar100_lt", data_dir=str(tmp_path), n_max=4, imb_factor=4,
                                    val_per_class=0))
    assert data.class_counts == long_tailed_counts(4, 100, 4) and data.class_names[99] == "fine99"


def test_missing_cifar_pickles_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*cs\.toronto\.edu/~kriz/cifar\.html"):
        build_datasets(RunConfig(dataset="cifar10_lt", data_dir=str(tmp_path)))
