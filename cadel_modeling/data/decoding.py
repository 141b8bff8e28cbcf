"""Image decoding: every image cell becomes an upright 8-bit RGB PIL image, whatever its file holds.

* 16-bit grayscale (PIL modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` and ``I``, as PNG and TIFF give them) is scaled
  to 8 bits, ``round(x * 255 / 65535)``; ``convert("RGB")`` would saturate every value above 255 to white. 16-bit RGB
  files already come out of PIL as 8-bit ``RGB`` (the high byte, within one level of the same scaling).
* Transparency (an alpha band, or a palette / grayscale image with a ``transparency`` entry) is composited onto white,
  as transformers' ``convert_to_rgb`` does, so training sees what the saved image processor feeds the model.
* CMYK and the other modes go through PIL's ``convert("RGB")``.
* The EXIF orientation is applied (``ImageOps.exif_transpose``, as transformers' ``load_image`` does).

JPEGs can be decoded at a reduced size (PIL's ``draft``: the DCT scales 1/2, 1/4, 1/8), which costs a fraction of
the full decode; ``decode`` takes the reduction, the transforms choose it (``transforms.py``). A sequential JPEG can
also stop below the rows its crop reads (``decode``'s ``extent``, ``with_height``): libjpeg decodes top to bottom,
and those rows come out byte for byte as in a full decode.
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
from PIL import ExifTags, ImageOps
from PIL import Image as PILImage

from ..utils.errors import UserError

logger = logging.getLogger(__name__)

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
REDUCTIONS = (8, 4, 2)                      # JPEG DCT scalings PIL's draft offers, largest first
TRANSPOSED = (5, 6, 7, 8)                   # EXIF orientations that swap width and height
CONSTANT_CHECK_IMAGES = 8                   # images per split that ``constant_images`` decodes
SEQUENTIAL_FRAMES = (0xC0, 0xC1)            # JPEG frame markers of baseline and extended sequential Huffman coding
OTHER_FRAMES = frozenset(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}   # progressive, lossless, arithmetic (not DHT/DAC)
UNSIZED_MARKERS = frozenset(range(0xD0, 0xDA)) | {0x01}          # RSTn, SOI, EOI, TEM: no length field
ROWS_MARGIN = 8         # rows (at the decoded scale) decoded below the last one read: 4:2:0 chroma upsampling uses
#                         the chroma row below, so the last row or two of a shortened decode differ from a full one
# EXIF orientation -> which side of ``decode``'s extent (0: columns, 1: rows) the stored rows run along, for the
# orientations that keep the stored top row at the upright image's top or left (the others would move the cut)
ROWS_FROM_TOP = {1: 1, 2: 1, 5: 0, 8: 0}


class UnreadableImageError(UserError, RuntimeError):
    """An image file that is missing, truncated or not an image."""


@dataclass
class EncodedImage:
    """An opened, not yet decoded image (PIL has read the header only) and where it came from, for error messages."""

    image: PILImage.Image
    source: str
    data: Optional[bytes] = None            # the encoded file, when read into memory (``decode`` may shorten it)

    @property
    def upright_size(self) -> Tuple[int, int]:
        """(width, height) once the EXIF orientation is applied."""
        width, height = self.image.size
        return (height, width) if orientation(self.image) in TRANSPOSED else (width, height)


def orientation(image: PILImage.Image) -> int:
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def open_image(value) -> Union[EncodedImage, PILImage.Image]:
    """Open one image cell without decoding its pixels: a path, an undecoded ``datasets.Image`` cell
    ``{"bytes", "path"}``, an array or a PIL image (the last two are returned as images). A local file is read whole
    first: one read and decoding from memory is faster than PIL's chunked reads of the open file."""
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, np.ndarray):
        return PILImage.fromarray(value)
    path, data = (value.get("path"), value.get("bytes")) if isinstance(value, dict) else (value, None)
    source = path or "<embedded bytes>"
    try:
        if data is None and path is not None and "://" in path:   # a remote file of a streamed Hub dataset
            from datasets import Image
            return Image().decode_example({"path": path, "bytes": None})
        if data is None:
            with open(path, "rb") as fh:
                data = fh.read()
        return EncodedImage(PILImage.open(io.BytesIO(data)), source, data)
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImageError(f"cannot read image {source}: {exc}") from exc


def reduction_for(width: float, height: float, needed: float) -> int:
    """The largest DCT reduction r (8, 4, 2, else 1) that keeps ``width / r`` and ``height / r`` >= ``needed``."""
    return next((r for r in REDUCTIONS if min(width, height) / r >= needed), 1)


def decode(image: Union[EncodedImage, PILImage.Image], reduction: int = 1,
           extent: Optional[Tuple[float, float]] = None) -> Tuple[PILImage.Image, float]:
    """(upright 8-bit RGB image, the reduction it was decoded at). ``reduction`` > 1 asks a JPEG for a DCT-scaled
    decode (other formats decode at full size, reported as reduction 1). ``extent`` = (columns, rows) of the upright
    full-size image from its top-left corner that the caller reads: a sequential JPEG then stops decoding
    ``ROWS_MARGIN`` rows below them, and the image returned is shorter (or narrower, for a turned one); the pixels
    inside the extent are those of a full decode. Decoding errors name the source."""
    if isinstance(image, PILImage.Image):
        return to_rgb(upright(image)), 1.0
    pil, got = image.image, 1.0
    try:
        if pil.format == "JPEG":
            pil = shortened(image, reduction, extent) or pil
            width, height = pil.size
            if reduction > 1:
                drafted = pil.draft(pil.mode, (width // reduction, height // reduction))
                if drafted is not None:
                    got = width / drafted[1][2]
        pil.load()
        return to_rgb(upright(pil)), got
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImageError(f"cannot read image {image.source}: {exc}") from exc


def shortened(image: EncodedImage, reduction: int, extent: Optional[Tuple[float, float]]) -> Optional[PILImage.Image]:
    """The JPEG reopened to decode only the stored rows that ``extent`` reaches (see ``decode``), or None when that
    saves nothing or cannot be done: no extent, no bytes in memory, an orientation that puts the cut rows first, or a
    file ``with_height`` does not shorten."""
    if extent is None or image.data is None:
        return None
    along = ROWS_FROM_TOP.get(orientation(image.image))
    if along is None:
        return None
    data = with_height(image.data, math.ceil(extent[along]) + ROWS_MARGIN * reduction)
    return None if data is None else PILImage.open(io.BytesIO(data))


def with_height(data: bytes, height: int) -> Optional[bytes]:
    """The JPEG ``data`` with its frame header saying the image is ``height`` rows tall, for a sequential
    Huffman-coded JPEG (SOF0 / SOF1) of 1 or 3 components that is taller; None for any other file. libjpeg then
    decodes the first ``height`` rows as a full decode does (all but the last one or two, see ``ROWS_MARGIN``),
    and skips the rest of the scan data to the end marker. Progressive files need every scan for each row, so they
    are left alone, like CMYK and anything this header walk does not recognise. So is a file that does not end with
    the end marker: one cut short must fail whatever its crop, as a full decode fails."""
    if not data.endswith(b"\xff\xd9"):
        return None
    pos = 2                                 # after the start-of-image marker
    while pos + 10 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in SEQUENTIAL_FRAMES:
            # FF C0 | length (2) | precision (1) | height (2) | width (2) | components (1)
            if data[pos + 9] not in (1, 3) or int.from_bytes(data[pos + 5:pos + 7], "big") <= height:
                return None
            return data[:pos + 5] + height.to_bytes(2, "big") + data[pos + 7:]
        if marker in OTHER_FRAMES or marker == 0xDA:    # another coding, or a scan with no frame before it
            return None
        if marker == 0xFF:                  # fill byte
            pos += 1
        elif marker in UNSIZED_MARKERS:
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def upright(image: PILImage.Image) -> PILImage.Image:
    """The image turned by its EXIF orientation (no copy when there is none)."""
    return ImageOps.exif_transpose(image) if orientation(image) != 1 else image


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """8-bit RGB, see the module docstring: 16-bit scaled, transparency composited onto white, CMYK converted."""
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return PILImage.fromarray(((wide + 128) // 257).astype(np.uint8), "L").convert("RGB")  # round(x / 257)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_for_side(image: Union[EncodedImage, PILImage.Image], min_side: Optional[int]) -> PILImage.Image:
    """Decode; a JPEG at the largest DCT reduction that keeps both sides >= ``min_side`` (full size with None)."""
    reduction = 1
    if min_side is not None and isinstance(image, EncodedImage):
        reduction = reduction_for(*image.image.size, min_side)
    return decode(image, reduction)[0]


def load_image(value, min_side: Optional[int] = None) -> PILImage.Image:
    """Decode one image cell now (a truncated file fails here and names its path) to upright 8-bit RGB. With
    ``min_side`` a JPEG decodes at the largest reduction that keeps both sides >= it (for checks, not training)."""
    return decode_for_side(open_image(value), min_side)


def constant_images(cells, limit: int = CONSTANT_CHECK_IMAGES) -> Optional[int]:
    """How many of the first ``limit`` images of a split decode to a single value each, when all of them do (else
    None). Blank inputs train at chance with nothing else going wrong, e.g. 16-bit files mis-read as white."""
    checked = 0
    for cell in cells:
        if checked == limit:
            break
        try:
            pixels = np.asarray(load_image(cell, min_side=64))
        except UnreadableImageError:
            continue                        # the split's bad-image policy deals with it
        if pixels.min() != pixels.max():
            return None
        checked += 1
    return checked or None
