"""A sequential JPEG stops decoding below the rows its crop reads (issue 27): those rows come out byte for byte as in
a full decode, for every subsampling, DCT reduction and EXIF orientation; files it cannot shorten (progressive,
CMYK, cut short, other formats) decode whole; the crops are the full decode's crops. The loaders' collate
normalises uint8 pixels into the batch with the values of ``ToNormalizedTensor``."""
import io
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from cadel_modeling.data import decoding, transforms
from cadel_modeling.data.decoding import UnreadableImageError, decode, open_image, with_height
from cadel_modeling.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodeRandomResizedCrop,
    NormalizingCollate,
    ToNormalizedTensor,
    build_transform,
    pixel_tensor,
)

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from input_pipeline import natural_image  # noqa: E402

KINDS = {"4:2:0": {"subsampling": 2}, "4:2:2": {"subsampling": 1}, "4:4:4": {"subsampling": 0}, "grey": {},
         "4:2:0, restart markers": {"subsampling": 2, "restart_marker_rows": 1}}


def jpeg(width, height, mode="RGB", seed=0, **save) -> bytes:
    buffer = io.BytesIO()
    natural_image(np.random.default_rng(seed), width, height).convert(mode).save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def opened(data: bytes):
    return open_image({"bytes": data, "path": None})


def decoded(data: bytes, reduction: int = 1, extent=None) -> np.ndarray:
    return np.asarray(decode(opened(data), reduction, extent=extent)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_a_shortened_decode_has_the_full_decodes_pixels_in_its_extent(kind):
    for width, height in ((803, 611), (500, 375)):
        data = jpeg(width, height, "L" if kind == "grey" else "RGB", **KINDS[kind])
        for reduction in (1, 2, 4, 8):
            full = decoded(data, reduction)
            for rows in (1, 15, 16, 17, 100, 201, height - 9 * reduction):   # the last: just short enough to cut
                short, got = decode(opened(data), reduction, extent=(width, rows))
                short = np.asarray(short)
                assert got == reduction and short.shape[1:] == full.shape[1:]
                assert short.shape[0] == math.ceil(rows / reduction) + decoding.ROWS_MARGIN < full.shape[0]
                needed = math.ceil(rows / reduction)
                np.testing.assert_array_equal(short[:needed], full[:needed], err_msg=f"{kind} {reduction} {rows}")


def test_without_the_margin_the_last_rows_of_a_420_jpeg_differ(monkeypatch):
    """Why ``ROWS_MARGIN``: 4:2:0 chroma upsampling reads the chroma row below, which a cut image replicates."""
    data = jpeg(500, 375, subsampling=2)
    full = decoded(data)
    monkeypatch.setattr(decoding, "ROWS_MARGIN", 0)
    short = decoded(data, extent=(500, 100))
    assert short.shape[0] == 100
    np.testing.assert_array_equal(short[:99], full[:99])
    assert (short[99] != full[99]).any()


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    natural_image(np.random.default_rng(1), 200, 150).convert("CMYK").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png() -> bytes:
    buffer = io.BytesIO()
    natural_image(np.random.default_rng(2), 200, 150).save(buffer, "PNG")
    return buffer.getvalue()


def turned(orientation: int, width=200, height=150, seed=3) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    natural_image(np.random.default_rng(seed), width, height).save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("name, data", [
    ("progressive", jpeg(200, 150, progressive=True)), ("CMYK", cmyk_jpeg()), ("PNG", png()),
    ("trailing bytes after the end marker", jpeg(200, 150) + b"\0\0"),
    ("turned 180 degrees", turned(3)), ("turned 90 degrees clockwise", turned(6))])
def test_files_it_cannot_shorten_decode_whole(name, data):
    assert with_height(data, 20) is None or name.startswith("turned")
    full = decoded(data)
    np.testing.assert_array_equal(decoded(data, extent=(20, 20)), full)


def test_a_jpeg_cut_short_fails_even_when_its_crop_lies_above_the_cut():
    data = jpeg(500, 375)
    cut = data[:len(data) * 2 // 3]
    with pytest.raises(UnreadableImageError, match="truncated"):
        decode(opened(cut), extent=(500, 50))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_crops_from_a_shortened_decode_are_the_full_decodes_crops(orientation, monkeypatch):
    """Every EXIF orientation, boxes of every size (some decoded at 1/2 size): the same pixels as when the whole image
    is decoded; orientations 1, 2, 5 and 8 keep the stored top rows at the top or left, and are the ones shortened."""
    data = turned(orientation, 960, 720, seed=orientation)
    crop = DecodeRandomResizedCrop(224)
    cut = []
    original = decoding.with_height
    monkeypatch.setattr(decoding, "with_height", lambda *a: cut.append(original(*a)) or cut[-1])

    def run():
        out = []
        for seed in range(30):
            torch.manual_seed(seed)
            out.append(np.asarray(crop(opened(data))))
        return out
    ours = run()
    monkeypatch.setattr(transforms, "decode", lambda image, reduction=1, extent=None: decode(image, reduction))
    whole = run()
    for a, b in zip(ours, whole):
        np.testing.assert_array_equal(a, b)
    assert (sum(c is not None for c in cut) > 10) == (orientation in (1, 2, 5, 8))


def test_the_loaders_collate_normalises_uint8_pixels_into_one_batch(monkeypatch):
    rng = np.random.default_rng(6)
    images = [natural_image(rng, 48, 64) for _ in range(5)]
    examples = [{"pixel_values": pixel_tensor(image), "labels": label} for label, image in enumerate(images)]
    batch = NormalizingCollate(IMAGENET_MEAN, IMAGENET_STD)(examples)
    per_image = ToNormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(batch["pixel_values"], torch.stack([per_image(image) for image in images]), atol=0,
                               rtol=0)
    reference = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(batch["pixel_values"], torch.stack([reference(image) for image in images]), atol=1e-6,
                               rtol=0)
    assert batch["labels"].tolist() == [0, 1, 2, 3, 4] and not batch["pixel_values"].is_shared()
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())   # as in a DataLoader worker
    assert NormalizingCollate(IMAGENET_MEAN, IMAGENET_STD)(examples)["pixel_values"].is_shared()


def test_the_transform_without_normalising_ends_with_the_uint8_pixels():
    image = natural_image(np.random.default_rng(7), 64, 48)
    pixels = build_transform(False, 32, IMAGENET_MEAN, IMAGENET_STD, normalize=False)(image)
    normalised = build_transform(False, 32, IMAGENET_MEAN, IMAGENET_STD)(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 32, 32)
    torch.testing.assert_close(ToNormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)(pixels), normalised, atol=0, rtol=0)
