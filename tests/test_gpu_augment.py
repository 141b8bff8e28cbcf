"""The device-side augmentation (``--decode_on_gpu``), through its CPU fallback: the same crops, flips and colour
factors as the CPU pipeline for the same (seed, epoch, row), images of the right shape and statistics, and a real
training run that uses it."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from cadel_modeling.data.gpu_augment import DeviceAugment, EncodedImages, collate_encoded, decode_batch
from cadel_modeling.data.transforms import row_seed

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def jpeg_dataset(tmp_path, n=6):
    from datasets import Dataset
    from datasets import Image as ImageFeature
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40 + 3 * i, 56, 3), dtype=np.uint8)).save(path, quality=95)
        paths.append(str(path))
    return Dataset.from_dict({"image": paths, "label": list(range(n))}).cast_column("image", ImageFeature())


def cpu_params(height, width, seed, epoch, row, jitter=0.4):
    """The CPU pipeline's draws for one image: RandomResizedCrop, then the flip, then ColorJitter, one seeded RNG."""
    crop, cj = T.RandomResizedCrop(32), T.ColorJitter(jitter, jitter, jitter, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(row_seed(seed, epoch, row))
        box = crop.get_params(torch.empty(3, height, width), crop.scale, crop.ratio)
        flip = bool(torch.rand(1) < 0.5)
        order, b, c, s, _ = cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
    return box, flip, order.tolist(), (b, c, s)


def test_device_draws_are_the_cpu_pipelines_draws():
    augment = DeviceAugment(32, MEAN, STD, color_jitter=0.4, seed=7)
    for row in range(50):
        for epoch in (1, 2):
            got = augment.params(40 + row, 60, row, epoch)
            box, flip, order, factors = cpu_params(40 + row, 60, 7, epoch, row)
            assert got["box"] == box and got["flip"] == flip
            assert got["jitter"][0].tolist() == order and tuple(got["jitter"][1:4]) == factors
    # over many rows, the crops' areas and aspect ratios follow torchvision's own RandomResizedCrop draws
    from scipy import stats
    ours = [augment.params(200, 300, row, 1)["box"] for row in range(2000)]
    torch.manual_seed(12345)
    theirs = [T.RandomResizedCrop.get_params(torch.empty(3, 200, 300), (0.08, 1.0), (3 / 4, 4 / 3))
              for _ in range(2000)]
    for key in (lambda b: b[2] * b[3], lambda b: b[3] / b[2]):  # area, aspect ratio
        assert stats.ks_2samp([key(b) for b in ours], [key(b) for b in theirs]).pvalue > 1e-3


def test_batch_decodes_and_augments_to_normalised_tensors(tmp_path):
    dataset = EncodedImages(jpeg_dataset(tmp_path))
    batch = collate_encoded([dataset[i] for i in range(len(dataset))])
    assert all(isinstance(b, bytes) for b in batch["encoded"]) and batch["rows"] == list(range(6))
    decoded = decode_batch(batch["encoded"], torch.device("cpu"))
    reference = [torch.from_numpy(np.asarray(Image.open(tmp_path / f"{i}.jpg"))).permute(2, 0, 1) for i in range(6)]
    assert all(d.shape == r.shape and (d.int() - r.int()).abs().float().mean() < 2 for d, r in zip(decoded, reference))
    x = DeviceAugment(32, MEAN, STD, seed=1)(batch, epoch=3, device=torch.device("cpu"))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # the first image without flip/jitter equals a plain crop of it, normalised
    no_aug = DeviceAugment(32, MEAN, STD, color_jitter=0.0, hflip=False, seed=1)
    first = no_aug({"encoded": batch["encoded"][:1], "rows": [0], "labels": batch["labels"][:1]}, 3,
                   torch.device("cpu"))
    top, left, h, w = no_aug.params(40, 56, 0, 3)["box"]
    crop = T.functional.resized_crop(decoded[0], top, left, h, w, [32, 32], antialias=True).float() / 255
    expected = (crop - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(first[0], expected)


@pytest.mark.slow
def test_a_run_trains_with_decode_on_gpu(tmp_path, monkeypatch):
    import json

    from test_data_builders import write_split_lists

    from cadel_modeling.config import parse_config
    from cadel_modeling.modeling.factory import load_model
    from cadel_modeling.stages import stage1
    calls = []

    class CountingAugment(DeviceAugment):  # every training batch goes through the device path, with its epoch
        def __call__(self, batch, epoch, device):
            out = super().__call__(batch, epoch, device)
            calls.append((epoch, tuple(out.shape), bool(torch.isfinite(out).all())))
            return out

    monkeypatch.setattr(stage1, "DeviceAugment", CountingAugment)
    write_split_lists(tmp_path)
    cfg = parse_config(["--dataset", "imagenet_lt", "--data_dir", str(tmp_path / "ImageNet_LT"), "--image_root",
                        str(tmp_path), "--backbone", "test_resnet", "--image_size", "32", "--aux_head", "light",
                        "--epochs", "2", "--augmentation", "imagenet", "--batch_size", "7", "--eval_batch_size", "8",
                        "--num_workers", "0",
                        "--decode_on_gpu", "--output_dir", str(tmp_path / "run"), "--num_classes", "4"])
    summary = stage1.run(cfg)
    assert summary["epochs"] == 2 and summary["skipped_steps"] == 0
    assert calls == [(epoch, (7, 3, 32, 32), True) for epoch in (1, 1, 2, 2)]  # 14 images, 2 steps per epoch
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["steps_taken"] for r in log] == [2, 2] and all(np.isfinite(r["train_loss"]) for r in log)
    best = load_model(tmp_path / "run" / "best_model")
    assert all(torch.isfinite(t).all() for t in best.state_dict().values())
