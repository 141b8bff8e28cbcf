"""Reduced-size JPEG decoding (``reduced_decode``, issue 27) leaves the augmentation's distribution as it was: the
crop boxes are torchvision's own draws, a crop decoded at full size is torchvision's pixel for pixel, and a crop
decoded at 1/2 size differs from the full-size one by about a grey level, with the same per-image statistics.
The faster jitter and tensor steps give torchvision's values."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from scipy.stats import ks_2samp
from torchvision import transforms as T

from cadel_modeling.data.decoding import open_image
from cadel_modeling.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodeRandomResizedCrop,
    LutColorJitter,
    ToNormalizedTensor,
    build_transform,
)

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from input_pipeline import natural_image  # noqa: E402

SEEDS = range(120)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """An iNaturalist-size (800x600) and an ImageNet-size (500x375) photo-like JPEG, quality 90."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths = {}
    for width, height in ((800, 600), (500, 375)):
        paths[width] = root / f"{width}.jpg"
        natural_image(rng, width, height).save(paths[width], quality=90)
    return paths


def crops(transform, path, seeds=SEEDS):
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(np.asarray(transform(open_image(str(path)))).astype(np.int16))
    return out


def spy_boxes(monkeypatch, cls):
    boxes = []
    original = cls.get_params

    def record(img, scale, ratio):
        boxes.append(original(img, scale, ratio))
        return boxes[-1]
    monkeypatch.setattr(cls, "get_params", staticmethod(record))
    return boxes


def test_at_full_size_the_crops_are_torchvision_pixel_for_pixel(jpegs):
    for width, path in jpegs.items():
        reference = []
        for seed in SEEDS:
            torch.manual_seed(seed)
            reference.append(np.asarray(T.RandomResizedCrop(224)(Image.open(path).convert("RGB"))).astype(np.int16))
        ours = crops(DecodeRandomResizedCrop(224, reduced_decode=False), path)
        assert all((a == b).all() for a, b in zip(ours, reference)), width
    # an ImageNet-size image never has a box of 2 x 224 in both sides: reduced decoding changes nothing there
    assert all((a == b).all() for a, b in zip(crops(DecodeRandomResizedCrop(224), jpegs[500]), reference))


def test_reduced_decode_keeps_the_boxes_and_the_pixel_statistics(jpegs, monkeypatch):
    boxes = spy_boxes(monkeypatch, DecodeRandomResizedCrop)
    full = crops(DecodeRandomResizedCrop(224, reduced_decode=False), jpegs[800])
    full_boxes = list(boxes)
    boxes.clear()
    reduced = crops(DecodeRandomResizedCrop(224), jpegs[800])
    assert boxes == full_boxes                                     # the same draws, box for box
    halved = [min(h, w) >= 448 for _, _, h, w in boxes]
    assert 0.25 < np.mean(halved) < 0.75                          # both paths are exercised
    differences = np.array([np.abs(a - b).mean() for a, b in zip(full, reduced)])
    assert (differences[~np.array(halved)] == 0).all()             # boxes under 448 px: decoded at full size
    assert differences[np.array(halved)].max() < 3.0 and differences.mean() < 1.5   # grey levels of 255
    for statistic in (np.mean, np.std):
        a, b = [statistic(x) for x in full], [statistic(x) for x in reduced]
        assert np.abs(np.subtract(a, b)).max() < 1.5
        assert ks_2samp(a, b).pvalue > 0.5


def box_statistics(boxes, width=800, height=600) -> dict:
    return {"scale": [h * w / (width * height) for _, _, h, w in boxes],
            "log_ratio": [np.log(w / h) for _, _, h, w in boxes],
            "centre_x": [(left + w / 2) / width for _, left, _, w in boxes],
            "centre_y": [(top + h / 2) / height for top, _, h, _ in boxes]}


def test_box_statistics_are_those_of_torchvisions_random_resized_crop(jpegs, monkeypatch):
    """Scale, aspect ratio and position of the boxes drawn with reduced decoding, against boxes torchvision draws
    from other seeds for an image of the same size (a two-sample KS test each)."""
    boxes = spy_boxes(monkeypatch, DecodeRandomResizedCrop)
    crops(DecodeRandomResizedCrop(224), jpegs[800], seeds=range(300))
    reference = []
    for seed in range(10_000, 11_000):
        torch.manual_seed(seed)
        reference.append(T.RandomResizedCrop.get_params(torch.empty(3, 600, 800), [0.08, 1.0], [3 / 4, 4 / 3]))
    ours, theirs = box_statistics(boxes), box_statistics(reference)
    for name in ours:
        assert ks_2samp(ours[name], theirs[name]).pvalue > 0.01, name


def test_evaluation_decodes_iNat_size_at_half_size_with_the_same_pixels_within_a_grey_level(jpegs):
    full = build_transform(False, 224, IMAGENET_MEAN, IMAGENET_STD, reduced_decode=False)
    reduced = build_transform(False, 224, IMAGENET_MEAN, IMAGENET_STD)
    for width, path in jpegs.items():
        a, b = full(open_image(str(path))), reduced(open_image(str(path)))
        difference = ((a - b) * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255).abs().mean()
        assert difference < (1.5 if width == 800 else 1e-6), width


def test_turned_jpegs_draw_the_box_on_the_upright_image(tmp_path):
    image = natural_image(np.random.default_rng(3), 300, 500)
    exif = Image.Exif()
    exif[0x0112] = 8
    image.save(tmp_path / "t.jpg", quality=90, exif=exif)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "t.jpg")).convert("RGB")
    for seed in range(10):
        torch.manual_seed(seed)
        expected = np.asarray(T.RandomResizedCrop(64)(upright))
        torch.manual_seed(seed)
        crop = DecodeRandomResizedCrop(64, reduced_decode=False)
        np.testing.assert_array_equal(np.asarray(crop(open_image(str(tmp_path / "t.jpg")))), expected)


def test_lookup_table_jitter_is_torchvisions_colour_jitter_bit_for_bit():
    image = natural_image(np.random.default_rng(4), 64, 48)
    for seed in range(60):
        torch.manual_seed(seed)
        expected = np.asarray(T.ColorJitter(0.4, 0.4, 0.4, 0)(image))
        torch.manual_seed(seed)
        np.testing.assert_array_equal(np.asarray(LutColorJitter(0.4, 0.4, 0.4, 0)(image)), expected)


def test_normalised_tensor_matches_to_tensor_and_normalize():
    image = natural_image(np.random.default_rng(5), 64, 48)
    expected = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image)
    ours = ToNormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)(image)
    assert ours.shape == expected.shape == (3, 48, 64) and ours.is_contiguous()
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
