"""Every image decoded right (issue 23, finding 5): 16-bit PNG/TIFF scaled to 8 bits (checked against numpy),
transparency composited onto white as transformers does, CMYK, EXIF orientation, and a warning for a split of blank
images. All images are generated here."""
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cadel_modeling.config import RunConfig
from cadel_modeling.data import build_datasets
from cadel_modeling.data.decoding import load_image
from cadel_modeling.data.gpu_augment import decode_batch
from cadel_modeling.data.loaders import LoaderSpec, build_train_loader


def exact_8bit(wide: np.ndarray) -> np.ndarray:
    return np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)


def sixteen_bit(shape, seed=0) -> np.ndarray:
    values = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    values.flat[:4] = [0, 65535, 128, 32896]        # ends, and values next to a rounding boundary
    return values


def write_png_rgb16(path, pixels: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (PIL cannot write one)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    height, width, _ = pixels.shape
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("suffix, mode", [(".png", "I;16"), (".tif", "I;16"), (".tif", "I;16B")])
def test_sixteen_bit_grayscale_is_scaled_to_8_bits(tmp_path, suffix, mode):
    wide = sixteen_bit((12, 9))
    path = tmp_path / f"g{suffix}"
    Image.frombytes(mode, (9, 12), wide.astype(">u2" if mode.endswith("B") else "<u2").tobytes()).save(path)
    assert Image.open(path).mode.startswith("I")       # the file really holds 16-bit samples
    rgb = np.asarray(load_image(str(path)))
    assert rgb.shape == (12, 9, 3)
    np.testing.assert_array_equal(rgb, np.repeat(exact_8bit(wide)[..., None], 3, axis=2))


def test_thirty_two_bit_mode_i_holds_16_bit_values_and_is_scaled_too():
    wide = sixteen_bit((5, 7), seed=1)
    rgb = np.asarray(load_image(Image.fromarray(wide.astype(np.int32), "I")))
    np.testing.assert_array_equal(rgb[..., 0], exact_8bit(wide))


def test_sixteen_bit_rgb_png_is_within_one_level_of_exact_scaling(tmp_path):
    wide = sixteen_bit((6, 10, 3), seed=2)
    write_png_rgb16(tmp_path / "rgb48.png", wide)
    rgb = np.asarray(load_image(str(tmp_path / "rgb48.png")))
    assert np.abs(rgb.astype(int) - exact_8bit(wide)).max() <= 1   # PIL keeps the high byte


def test_palette_transparency_and_alpha_are_composited_onto_white_as_transformers_does(tmp_path):
    from transformers.image_transforms import convert_to_rgb
    palette = Image.new("P", (4, 3))
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putdata([0, 1] * 6)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    rgba = Image.new("RGBA", (4, 3), (0, 0, 255, 0))
    rgba.putpixel((1, 1), (0, 0, 255, 255))
    rgba.save(tmp_path / "a.png")
    for name in ("p.png", "a.png"):
        ours = np.asarray(load_image(str(tmp_path / name)))
        np.testing.assert_array_equal(ours, convert_to_rgb(Image.open(tmp_path / name), return_numpy=True))
    assert load_image(str(tmp_path / "p.png")).getpixel((0, 0)) == (255, 255, 255)   # transparent: white
    assert load_image(str(tmp_path / "a.png")).getpixel((1, 1)) == (0, 0, 255)


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_becomes_rgb(tmp_path, suffix):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / f"c{suffix}")
    rgb = np.asarray(load_image(str(tmp_path / f"c{suffix}"))).astype(int)
    assert np.abs(rgb - [255, 0, 0]).max() <= 3


def turned_jpeg(path, orientation=6):
    """A 40x20 JPEG, left half red and right half blue, stored with an EXIF orientation."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_is_applied(tmp_path):
    path = turned_jpeg(tmp_path / "turned.jpg")
    ours = load_image(str(path))
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert ours.size == upright.size == (20, 40)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(upright))
    # the device decoder's batch path (its CPU fallback here) turns it too
    decoded = decode_batch([path.read_bytes()], torch.device("cpu"))[0]
    assert decoded.shape == (3, 40, 20)
    np.testing.assert_array_equal(decoded.permute(1, 2, 0).numpy(), np.asarray(upright))


def imagefolder(root, write, per_class=6):
    for split, count in (("train", per_class), ("val", 2)):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                write(folder / f"{i}.png", label, i)
    return root


def write_sixteen_bit(path, label, i):
    """Class 0 dark, class 1 bright, each a gradient: every value above 255, which a plain convert("RGB") saturates."""
    ramp = np.linspace(0, 1, 16)[None, :] * np.linspace(0.5, 1, 16)[:, None]
    level = (0.15 + 0.6 * label + 0.02 * i + 0.2 * ramp) * 65535
    Image.fromarray(np.clip(level, 300, 65535).astype(np.uint16)).save(path)


def test_sixteen_bit_imagefolder_gives_non_constant_inputs_that_tell_the_classes_apart(tmp_path, caplog):
    root = imagefolder(tmp_path, write_sixteen_bit)
    cfg = RunConfig(dataset="imagefolder", data_dir=str(root), image_size=16, augmentation="none", batch_size=12,
                    num_workers=0)
    with caplog.at_level(logging.WARNING):
        data = build_datasets(cfg)
    assert "flat value" not in caplog.text
    batch = next(iter(build_train_loader(data, LoaderSpec.from_config(cfg), num_processes=1)))
    pixels, labels = batch["pixel_values"], batch["labels"]
    assert (pixels.flatten(2).std(dim=2) > 0.1).all()          # per image and channel; today's code: all white
    means = pixels.mean(dim=(1, 2, 3))
    assert means[labels == 0].max() < means[labels == 1].min()


def test_a_split_of_blank_images_gets_one_warning_naming_it(tmp_path, caplog):
    root = imagefolder(tmp_path, lambda path, label, i: Image.new("RGB", (12, 12), (255, 255, 255)).save(path))
    with caplog.at_level(logging.WARNING):
        build_datasets(RunConfig(dataset="imagefolder", data_dir=str(root), num_workers=0))
    warnings = [r.getMessage() for r in caplog.records if "flat value" in r.getMessage()]
    assert [w.split(":")[0] for w in warnings] == ["train", "val"]
    assert warnings[0].startswith("train: the first 8 images each decode to a single flat value")
