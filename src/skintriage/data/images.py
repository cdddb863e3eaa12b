"""The one image decoder used everywhere: dataset loading, prediction and the demo.

Phone photos arrive rotated by EXIF, scanners write CMYK or 16-bit files, PNGs carry alpha or a
palette, and a hostile upload can be a decompression bomb. Every path into the model goes through
:func:`decode_image`, so each of these is handled once and fails with a message that names the file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from skintriage.common.errors import SkintriageError

# 40 megapixels covers most phones and every dermatoscope; a larger JPEG (108 MP phones) is decoded at a
# reduced scale that fits, any other larger image is refused before decoding.
DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = str | os.PathLike[str] | bytes | BinaryIO

# The formats decode_image reads, each with the file suffixes that name it (tests/data/test_images.py checks them
# against Pillow). The one list every folder listing uses: ``skintriage predict FOLDER``, the dataset sources.
DECODED_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "TIFF": (".tif", ".tiff"),
    "BMP": (".bmp",),
    "GIF": (".gif",),
    "WebP": (".webp",),
}
IMAGE_SUFFIXES = tuple(suffix for suffixes in DECODED_FORMATS.values() for suffix in suffixes)
# Phone photo formats decode_image refuses, saying to convert them (HEIF_REFUSED). A listing of a user's
# folder includes them, so that such a photo is reported with that advice instead of being skipped silently.
REFUSED_SUFFIXES = (".heic", ".heif", ".avif")
PHOTO_SUFFIXES = IMAGE_SUFFIXES + REFUSED_SUFFIXES

_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif")


class ImageDecodeError(SkintriageError, ValueError):
    """An image that cannot be used, with a message a user can act on."""


def decode_image(source: ImageSource, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode any supported image to an upright 8-bit RGB ``PIL.Image``.

    ``name`` is what error messages call the image (defaults to the path); pass the user's file name
    for uploads so that the message points at something they recognise.
    """
    label = name or (str(source) if isinstance(source, str | os.PathLike) else "image")
    data = _read_bytes(source, label)
    problem = _content_problem(data[:16])
    if problem:
        raise ImageDecodeError(f"{label}: {problem}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            problem = _fit_to_budget(image, max_pixels)
            if problem:
                raise ImageDecodeError(f"{label}: {problem}")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated GIF/PNG/TIFF: the first frame is the picture
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright)
    except ImageDecodeError:
        raise
    except Exception as error:
        raise ImageDecodeError(f"{label}: {_pillow_problem(error)}") from None


def _pillow_problem(error: Exception) -> str:
    """What an exception raised inside Pillow means for the user (the decoder's and the header check's wording)."""
    if isinstance(error, UnidentifiedImageError):
        return NOT_AN_IMAGE
    if isinstance(error, Image.DecompressionBombError):
        return f"refused as a possible decompression bomb ({error})"
    # a damaged file can raise almost anything inside Pillow: OSError, SyntaxError, ValueError, and from a
    # corrupt TIFF header TypeError, KeyError, struct.error...
    return f"the image is truncated or corrupt ({str(error) or type(error).__name__})"


NOT_AN_IMAGE = f"not a recognised image file ({', '.join(DECODED_FORMATS)})"
HEIF_REFUSED = (
    "HEIC/HEIF/AVIF photos are not supported; convert it to JPEG or PNG (on a phone: share or export as JPEG) "
    "and try again"
)


def _content_problem(head: bytes) -> str | None:
    """What is wrong with a file, judged from its first bytes: empty, or a HEIF container Pillow cannot read."""
    if not head:
        return "file is empty (0 bytes)"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return HEIF_REFUSED
    return None


def _fit_to_budget(image: Image.Image, max_pixels: int) -> str | None:
    """Check an opened image's size against ``max_pixels``; a larger JPEG is set to decode at a reduced scale.

    Returns the problem (zero size, too many pixels), or ``None`` when the image can be decoded.
    """
    width, height = image.size
    if width <= 0 or height <= 0:
        return f"the image has zero size ({width}x{height})"
    if width * height > max_pixels and isinstance(image, JpegImagePlugin.JpegImageFile):
        _draft_within(image, max_pixels)  # a 108 MP phone JPEG: decode at 1/2, 1/4 or 1/8 scale
    if image.width * image.height > max_pixels:
        return (
            f"{width}x{height} pixels is larger than the limit of {max_pixels:,} pixels; "
            "downscale the photo and try again"
        )
    return None


def _draft_within(image: Image.Image, max_pixels: int) -> None:
    """Make a JPEG decode at the mildest DCT scale (1/2, then 1/4, then 1/8) whose size fits ``max_pixels``.

    libjpeg scales while it decodes, so a 12000x9000 photo costs the time and memory of 6000x4500 (the
    model sees 128 px anyway). Left unchanged when even 1/8 does not fit; the caller then refuses it.
    """
    width, height = image.size
    for scale in (2, 4, 8):
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            image.draft(image.mode, (width // scale, height // scale))
            return


def decode_array(array: np.ndarray, *, name: str) -> Image.Image:
    """Turn an image stored as an array (MedMNIST ``.npz``) into RGB, with the same checks as files."""
    if array.ndim not in (2, 3) or 0 in array.shape[:2]:
        raise ImageDecodeError(f"{name}: array of shape {array.shape} is not an image")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        array = _scale_to_uint8(array)
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.shape[2] == 3:
        return Image.fromarray(array, mode="RGB")
    if array.shape[2] == 4:
        return to_rgb(Image.fromarray(array, mode="RGBA"))
    raise ImageDecodeError(f"{name}: array of shape {array.shape} has {array.shape[2]} channels, expected 1, 3 or 4")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is flattened onto white, as a viewer shows it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """High-bit-depth pixels to 8 bits: integer images by their type's full range, floats by 0..1 or min..max."""
    if np.issubdtype(array.dtype, np.integer):
        top = 255 if array.max(initial=0) <= 255 else (65535 if array.max() <= 65535 else int(array.max()))
        return (array.astype(np.float64) * (255.0 / top)).round().clip(0, 255).astype(np.uint8)
    values = np.nan_to_num(array.astype(np.float64))
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low >= 0.0 and high <= 1.0:
        return (values * 255.0).round().astype(np.uint8)
    span = high - low or 1.0
    return ((values - low) * (255.0 / span)).round().clip(0, 255).astype(np.uint8)


def _read_bytes(source: ImageSource, label: str) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise ImageDecodeError(f"{label}: file not found")
        if not path.is_file():
            raise ImageDecodeError(f"{label}: not a regular file")
        try:
            return path.read_bytes()
        except OSError as error:
            raise ImageDecodeError(f"{label}: cannot be read ({error.strerror})") from None
    return source.read()


def image_header_problem(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Cheap readability check for manifest validation: the file exists and has a usable image header.

    Decoding every pixel of a large dataset on each load would be slow; the header is enough to catch
    missing, empty, HEIC, non-image, oversized and decompression-bomb files, with the same wording as
    :func:`decode_image`. A file whose pixel data is truncated passes here and fails when decoded.
    """
    if not path.is_file():
        return "file not found"
    try:
        file = path.open("rb")
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    try:
        with file:
            problem = _content_problem(file.read(16))
            if problem:
                return problem
            file.seek(0)
            with Image.open(file) as image:
                return _fit_to_budget(image, max_pixels)
    except Exception as error:
        return _pillow_problem(error)
