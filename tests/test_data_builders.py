"""ImageNet-LT-, Places-LT-, iNat18-, imagefolder- and Hub-shaped datasets written to disk as real JPEGs, loaded
through ``build_datasets(RunConfig(...))`` and ``build_train_loader`` as users run them, and every bad-input case."""
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from cadel_modeling.config import RunConfig
from cadel_modeling.data import UnreadableImageError, build_datasets
from cadel_modeling.data.image_lists import class_names_from_paths, read_split_list
from cadel_modeling.data.loaders import LoaderSpec, build_eval_loader, build_train_loader
from cadel_modeling.data.transforms import INAT_MEAN, INAT_STD, build_transform

COUNTS = [6, 4, 3, 1]          # a small long tail
SHADE_STEP = 5                 # image k is a solid colour with red = SHADE_STEP * k, so a tensor names its file


def write_jpeg(path, shade: int = 0, size=(50, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 255 - shade, 100)).save(path, quality=95)


def shade_of(pixel_values: torch.Tensor, mean, std) -> list:
    """Inverse of ``write_jpeg``'s colouring for tensors of the 'none' augmentation (a resize of a solid colour)."""
    red = pixel_values[:, 0].mean(dim=(1, 2)) * std[0] + mean[0]
    return torch.round(red * 255 / SHADE_STEP).long().tolist()


def write_split_lists(root, counts=COUNTS, prefix="ImageNet_LT", list_dir=None, per_eval_class=2):
    """An ImageNet-LT-shaped folder: ``train/<wnid>/..`` images for train and val, ``val/ILSVRC2012_val_..`` for test,
    the three split lists in ``list_dir`` (default: ``root/<prefix>``). Train image k has shade k."""
    lines = {"train": [], "val": [], "test": []}
    shade = 0
    for c, n in enumerate(counts):
        wnid = f"n{c:08d}"
        for i in range(n):
            lines["train"].append((f"train/{wnid}/{wnid}_{i}.JPEG", c, shade))
            shade += 1
        lines["val"] += [(f"train/{wnid}/{wnid}_v{i}.JPEG", c, 0) for i in range(per_eval_class)]
        lines["test"] += [(f"val/ILSVRC2012_val_{c:04d}{i:04d}.JPEG", c, 0) for i in range(per_eval_class)]
    list_dir = list_dir or root / prefix
    list_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (list_dir / f"{prefix}_{split}.txt").write_text("".join(f"{p} {c}\n" for p, c, _ in rows))
        for p, _, s in rows:
            write_jpeg(root / p, SHADE_STEP * s)
    return lines


def config(root, **overrides):
    base = dict(dataset="imagenet_lt", data_dir=str(root), image_size=16, augmentation="none", batch_size=4,
                eval_batch_size=8, num_workers=0, seed=0)
    return RunConfig(**{**base, **overrides})


# ------------------------------------------------------------------------------------------------ builders
def test_imagenet_lt_shaped_lists_load_and_every_label_stays_with_its_image(tmp_path):
    lines = write_split_lists(tmp_path)
    cfg = config(tmp_path, num_workers=2)
    data = build_datasets(cfg)
    assert data.class_counts == COUNTS
    assert data.class_names == [f"n{c:08d}" for c in range(4)]
    assert (len(data.splits["val"]), len(data.splits["test"])) == (8, 8)
    loader = build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1)
    label_of_shade = {s: c for _, c, s in lines["train"]}
    seen = []
    for batch in loader:
        assert batch["pixel_values"].shape == (4, 3, 16, 16)
        shades = shade_of(batch["pixel_values"], data.mean, data.std)
        assert batch["labels"].tolist() == [label_of_shade[s] for s in shades]
        seen += shades
    assert len(seen) == len(set(seen)) == 12      # 14 images, drop_last; no image twice
    test = next(iter(build_eval_loader(data, "test", LoaderSpec.from_config(cfg), num_processes=1)))
    assert test["pixel_values"].shape == (8, 3, 16, 16) and test["labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_places_lt_shaped_lists_in_data_dir_itself(tmp_path):
    names = ["airfield", "beach", "canyon"]
    counts = [5, 3, 2]
    rows = {"train": [], "val": [], "test": []}
    for c, (name, n) in enumerate(zip(names, counts)):
        rows["train"] += [f"data_256/{name[0]}/{name}/{i:08d}.jpg {c}" for i in range(n)]
        rows["val"] += [f"data_256/{name[0]}/{name}/{90 + i:08d}.jpg {c}" for i in range(2)]
        rows["test"] += [f"val_256/Places365_val_{c}{i:07d}.jpg {c}" for i in range(3)]
    for split, lines in rows.items():
        (tmp_path / f"Places_LT_{split}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            write_jpeg(tmp_path / line.split()[0])
    cfg = config(tmp_path, dataset="places_lt", batch_size=2, augmentation="imagenet", image_size=32)
    data = build_datasets(cfg)
    assert data.class_counts == counts
    assert data.class_names == ["a/airfield", "b/beach", "c/canyon"]
    assert (len(data.splits["val"]), len(data.splits["test"])) == (6, 9)
    batch = next(iter(build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1)))
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["labels"].dtype == torch.long


def write_inat(root, train_counts=(4, 2, 1), val_per_class=3, shuffle_annotations=True):
    """iNat 2018 JSON files (annotations listed in another order than the images) and their JPEGs."""
    rng = np.random.default_rng(0)
    truth = {}
    for split, counts in (("train", train_counts), ("val", [val_per_class] * len(train_counts))):
        images, annotations = [], []
        for c, n in enumerate(counts):
            for _i in range(n):
                image_id = 1000 * (split == "val") + len(images)
                name = f"train_val2018/Plantae/{c}/{split}{image_id:05d}.jpg"
                images.append({"id": image_id, "file_name": name, "width": 50, "height": 40})
                annotations.append({"id": 7 + image_id, "image_id": image_id, "category_id": c})
                truth[str(root / name)] = c
                write_jpeg(root / name)
        if shuffle_annotations:
            annotations = [annotations[i] for i in rng.permutation(len(annotations))]
        categories = [{"id": c, "name": f"species_{c}", "supercategory": "Plantae"} for c in range(len(counts))]
        (root / f"{split}2018.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                            "categories": categories}))
    return truth


def test_inat18_shaped_json_labels_by_image_id_and_val_is_the_reported_split(tmp_path):
    truth = write_inat(tmp_path)
    cfg = config(tmp_path, dataset="inat18", batch_size=3, augmentation="imagenet", color_jitter=0.4)
    data = build_datasets(cfg)
    assert data.class_counts == [4, 2, 1]
    assert data.class_names == ["species_0", "species_1", "species_2"]
    assert data.splits["val"] is data.splits["test"] and len(data.splits["test"]) == 9
    for split in (data.train, data.splits["test"]):
        cells = split.cast_column("image", type(split.features["image"])(decode=False))
        assert all(truth[row["image"]["path"]] == row["label"] for row in cells)
    assert (tuple(data.mean), tuple(data.std), data.color_jitter) == (INAT_MEAN, INAT_STD, 0.0)
    assert any("no separate val" in note for note in data.notes)
    batch = next(iter(build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1)))
    assert batch["pixel_values"].shape == (3, 3, 16, 16)


def test_imagefolder_with_train_val_test_folders(tmp_path):
    counts = {"cat": 5, "dog": 2, "emu": 1}
    for split in ("train", "val", "test"):
        for name, n in counts.items():
            for i in range(n if split == "train" else 2):
                write_jpeg(tmp_path / split / name / f"{i}.jpg")
    cfg = config(tmp_path, dataset="imagefolder", batch_size=2)
    data = build_datasets(cfg)
    assert data.class_names == ["cat", "dog", "emu"] and data.class_counts == [5, 2, 1]
    assert (len(data.splits["val"]), len(data.splits["test"])) == (6, 6)
    batch = next(iter(build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1)))
    assert batch["pixel_values"].shape == (2, 3, 16, 16)


@pytest.mark.parametrize("spelling", [
    ["--dataset", "imagefolder", "--data_dir", "{root}"],
    ["--dataset", "hub", "--dataset_name", "imagefolder", "--data_dir", "{root}"],  # load_dataset's spelling
    ["--dataset_name", "imagefolder", "--data_dir", "{root}"],
    ["--train_dir", "{root}/train", "--validation_dir", "{root}/val"],             # the HF examples' spelling
])
def test_a_long_tailed_imagefolder_under_the_demo_preset_is_used_as_found(tmp_path, spelling):
    from cadel_modeling.config import parse_config
    counts = {"ant": 7, "bee": 3, "fly": 1}  # already long-tailed, fewer than the preset's n_max of 500
    for name, n in counts.items():
        for i in range(n):
            write_jpeg(tmp_path / "train" / name / f"{i}.jpg")
        write_jpeg(tmp_path / "val" / name / "0.jpg")
    cfg = parse_config(["--config", "fashion_mnist_lt"] + [a.format(root=tmp_path) for a in spelling])
    data = build_datasets(cfg)
    assert data.class_names == list(counts) and data.class_counts == list(counts.values())
    assert len(data.splits["val"]) == 3


def test_hub_builder_reads_a_saved_dataset_with_custom_columns(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    def split(labels):
        paths = []
        for i, _label in enumerate(labels):
            write_jpeg(tmp_path / "jpg" / f"{len(labels)}_{i}.jpg", SHADE_STEP * i)
            paths.append(str(tmp_path / "jpg" / f"{len(labels)}_{i}.jpg"))
        features = Features({"picture": ImageFeature(), "species": ClassLabel(names=["ant", "bee", "fly"])})
        return Dataset.from_dict({"picture": paths, "species": labels}, features=features)

    DatasetDict({"train": split([0, 0, 0, 1, 1, 2]), "validation": split([0, 1, 2])}).save_to_disk(tmp_path / "saved")
    cfg = config(tmp_path, dataset="hub", hub_dataset_id=str(tmp_path / "saved"), image_column="picture",
                 label_column="species", batch_size=3)
    data = build_datasets(cfg)
    assert data.class_names == ["ant", "bee", "fly"] and data.class_counts == [3, 2, 1]
    assert data.splits["test"] is data.splits["val"] and any("no test split" in n for n in data.notes)
    batch = next(iter(build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1)))
    assert batch["pixel_values"].shape == (3, 3, 16, 16)


def test_hub_builder_names_the_missing_column(tmp_path):
    from datasets import Dataset, DatasetDict
    DatasetDict({"train": Dataset.from_dict({"img": ["a"], "label": [0]}),
                 "test": Dataset.from_dict({"img": ["b"], "label": [0]})}).save_to_disk(tmp_path / "saved")
    with pytest.raises(ValueError, match=r"no column 'image'.*--image_column"):
        build_datasets(config(tmp_path, dataset="hub", hub_dataset_id=str(tmp_path / "saved")))


def test_transforms_honour_image_size_384_and_turn_jitter_off():
    image = Image.new("RGB", (500, 375), (10, 20, 30))
    evaluation = build_transform(False, 384, INAT_MEAN, INAT_STD)
    resize = next(t for t in evaluation.transforms if type(t).__name__ == "Resize")
    assert resize.size == round(384 * 256 / 224) == 439
    assert evaluation(image).shape == (3, 384, 384)
    assert build_transform(True, 384, INAT_MEAN, INAT_STD)(image).shape == (3, 384, 384)
    with_jitter = build_transform(True, 224, INAT_MEAN, INAT_STD, color_jitter=0.4).transforms
    without = build_transform(True, 224, INAT_MEAN, INAT_STD, color_jitter=0.0).transforms
    assert [type(t).__name__ for t in with_jitter if type(t).__name__ not in [type(u).__name__ for u in without]] \
        == ["LutColorJitter"]


def test_reference_imagenet_lt_val_and_test_lists(reference_data):
    paths, labels = read_split_list(reference_data / "ImageNet_LT_val.txt")
    assert np.bincount(labels).tolist() == [20] * 1000
    names = class_names_from_paths(paths, labels, 1000)
    assert len(set(names)) == 1000 and names[0] == "n01440764"
    _, test_labels = read_split_list(reference_data / "ImageNet_LT_test.txt")
    assert np.bincount(test_labels).tolist() == [50] * 1000


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_split_list_names_the_file_and_where_to_get_it(tmp_path):
    write_split_lists(tmp_path)
    (tmp_path / "ImageNet_LT" / "ImageNet_LT_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ImageNet_LT_val\.txt not found.*OLTR.*ImageNet-2012"):
        build_datasets(config(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"needs --data_dir.*Places_LT_train\.txt.*Places365"):
        build_datasets(config(tmp_path, dataset="places_lt", data_dir=None))
    with pytest.raises(FileNotFoundError, match=r"train2018\.json not found.*iNaturalist 2018"):
        build_datasets(config(tmp_path, dataset="inat18"))


def test_missing_image_files_are_counted_and_the_first_ones_named(tmp_path):
    write_split_lists(tmp_path)
    for i in range(3):
        (tmp_path / "train" / "n00000000" / f"n00000000_{i}.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match=r"train: 3 of 14 image files are missing, first: .*n00000000_0\.JPEG"):
        build_datasets(config(tmp_path))


def corrupt(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])    # a truncated JPEG: the header opens, the decode fails


def test_corrupt_jpeg_fails_with_its_path(tmp_path):
    write_split_lists(tmp_path)
    bad = tmp_path / "train" / "n00000001" / "n00000001_0.JPEG"
    corrupt(bad)
    cfg = config(tmp_path, bad_image_policy="fail", batch_size=14)
    data = build_datasets(cfg)
    with pytest.raises(UnreadableImageError, match=rf"{bad}.*--bad_image_policy skip"):
        next(iter(build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1)))


def test_corrupt_jpeg_is_skipped_counted_and_logged(tmp_path, caplog):
    lines = write_split_lists(tmp_path)
    bad = tmp_path / "train" / "n00000001" / "n00000001_0.JPEG"
    corrupt(bad)
    bad_shade = next(s for p, _, s in lines["train"] if p.endswith("n00000001_0.JPEG"))
    cfg = config(tmp_path, bad_image_policy="skip", batch_size=7)
    data = build_datasets(cfg)
    with caplog.at_level(logging.WARNING):
        batches = list(build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1))
    assert [len(b["labels"]) for b in batches] == [7, 7]         # the bad image was replaced, batches stay full
    shades = [s for b in batches for s in shade_of(b["pixel_values"], data.mean, data.std)]
    assert bad_shade not in shades
    assert int(data.skipped_images) >= 1
    assert str(bad) in caplog.text and "skipped unreadable image" in caplog.text


@pytest.mark.parametrize("split, wrong", [("train", 1), ("val", 2)])
def test_label_outside_the_classes(tmp_path, split, wrong):
    write_split_lists(tmp_path)
    path = tmp_path / "ImageNet_LT" / f"ImageNet_LT_{split}.txt"
    path.write_text(path.read_text().replace(" 3\n", " -1\n"))
    with pytest.raises(ValueError, match=rf"{split}: {wrong} labels outside \[0, 4\)"):
        build_datasets(config(tmp_path))


def test_class_without_training_image(tmp_path):
    write_split_lists(tmp_path)
    lists = tmp_path / "ImageNet_LT"
    train = [line for line in (lists / "ImageNet_LT_train.txt").read_text().splitlines() if not line.endswith(" 2")]
    (lists / "ImageNet_LT_train.txt").write_text("\n".join(train) + "\n")
    with pytest.raises(ValueError, match=r"1 classes have no training image \(class 2 '2'\)"):
        build_datasets(config(tmp_path))


def test_class_count_disagreeing_with_the_config(tmp_path):
    write_split_lists(tmp_path)
    with pytest.raises(ValueError, match=r"num_classes=1000 but imagenet_lt has 4 classes"):
        build_datasets(config(tmp_path, num_classes=1000))


def test_malformed_split_list_line(tmp_path):
    write_split_lists(tmp_path)
    with open(tmp_path / "ImageNet_LT" / "ImageNet_LT_test.txt", "a") as fh:
        fh.write("val/no_label.JPEG\n")
    with pytest.raises(ValueError, match=r"ImageNet_LT_test\.txt:9: expected '<relative image path> <integer label>'"):
        build_datasets(config(tmp_path))


def test_inat_images_without_annotation(tmp_path):
    write_inat(tmp_path)
    meta = json.loads((tmp_path / "val2018.json").read_text())
    meta["annotations"] = meta["annotations"][1:]
    (tmp_path / "val2018.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"image and annotation ids do not line up \(9 images, 8 annotations"):
        build_datasets(config(tmp_path, dataset="inat18"))


def test_imagefolder_without_train_folder(tmp_path):
    write_jpeg(tmp_path / "val" / "cat" / "0.jpg")
    with pytest.raises(FileNotFoundError, match=r"train/<class name>/<images>"):
        build_datasets(config(tmp_path, dataset="imagefolder"))


def test_corrupt_validation_image_is_found_before_training(tmp_path):
    write_split_lists(tmp_path)
    lines = (tmp_path / "ImageNet_LT" / "ImageNet_LT_val.txt").read_text().split()
    bad = tmp_path / lines[0]
    corrupt(bad)
    with pytest.raises(UnreadableImageError, match=rf"val: 1 of \d+ images cannot be read .*{bad.name}"):
        build_datasets(config(tmp_path))  # at build time: no loader, no epoch
    data = build_datasets(config(tmp_path, bad_image_policy="skip"))  # skip: left out of the evaluation split
    assert len(data.splits["val"]) == len(lines) // 2 - 1
    assert any("val: 1 unreadable images left out" in note for note in data.notes)


def test_imagefolder_layout_problems_name_the_folders(tmp_path):
    root = tmp_path / "folder"
    for split, classes in (("train", ["cat", "dog"]), ("val", ["cat", "dog", "owl"])):
        for c in classes:
            write_jpeg(root / split / c / "a.jpg")
    with pytest.raises(ValueError, match=r"val has class folders that train/ lacks: \['owl'\]"):
        build_datasets(RunConfig(dataset="imagefolder", data_dir=str(root)))
    write_jpeg(root / "train" / "loose.jpg")
    with pytest.raises(ValueError, match=r"train holds images directly \(loose.jpg\); put each image in a folder "
                                         r"named after its class"):
        build_datasets(RunConfig(dataset="imagefolder", data_dir=str(root)))


def test_a_balanced_imagefolder_made_long_tailed_with_the_builtin_profile(tmp_path):
    from cadel_modeling.data import long_tailed_counts
    root = tmp_path / "balanced"
    names = [f"class{c}" for c in range(5)]
    for c, name in enumerate(names):
        for i in range(30):
            write_jpeg(root / "train" / name / f"{i}.jpg", shade=(7 * c + i) % 50)
        for i in range(4):
            write_jpeg(root / "test" / name / f"{i}.jpg")
    cfg = RunConfig(dataset="imagefolder", data_dir=str(root), imb_factor=10, val_per_class=5, seed=3)
    data = build_datasets(cfg)
    expected = long_tailed_counts(25, 5, 10)  # n_max = the smallest class (30) minus the 5 carved for val
    assert data.class_counts == expected == [25, 14, 7, 4, 2]
    assert data.class_names == names and data.train.features["label"].names == names
    val_labels = data.splits["val"]["label"]
    assert sorted(val_labels) == sorted(list(range(5)) * 5)  # 5 per class, from images training does not use
    train_files = {row["image"].filename for row in data.train}
    assert not train_files & {row["image"].filename for row in data.splits["val"]}
    again = build_datasets(cfg)
    assert [r["image"].filename for r in again.train] == [r["image"].filename for r in data.train]  # seeded


@pytest.mark.parametrize("dataset, expected", [
    ("fashion_mnist_lt", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "zalando-datasets/fashion_mnist",
                          "apt-get install dataset-fashion-mnist"]),
    ("cifar10_lt", ["cifar-10-batches-py/", "data_batch_1", "test_batch", "uoft-cs/cifar10"]),
    ("cifar100_lt", ["cifar-100-python/", "train", "uoft-cs/cifar100"]),
    ("imagenet_lt", ["ImageNet_LT_train.txt", "--data_dir", "OLTR split lists", "image-net.org"]),
    ("places_lt", ["Places_LT_train.txt", "--data_dir", "places2.csail.mit.edu"]),
    ("inat18", ["train2018.json", "--data_dir", "inat_comp"]),
    ("hub", ["--hub_dataset_id"]),
])
def test_missing_data_offline_says_where_to_put_it(dataset, expected, tmp_path, monkeypatch):
    """No local files and no Hub (the tests run offline): one line naming the layout and where to get the data."""
    from cadel_modeling.data import fashion_mnist
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-debian-package"))
    with pytest.raises((FileNotFoundError, ValueError)) as exc:
        build_datasets(RunConfig(dataset=dataset))
    message = str(exc.value)
    assert "\n" not in message and all(part in message for part in expected), message
    if dataset in ("fashion_mnist_lt", "cifar10_lt"):  # an empty --data_dir names the files it should hold
        with pytest.raises(FileNotFoundError, match="idx1-ubyte|batches.meta"):
            build_datasets(RunConfig(dataset=dataset, data_dir=str(tmp_path)))
