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
from PIL import Image, ImageOps, UnidentifiedImageError

# 40 megapixels covers any current phone or dermatoscope; a larger image is refused before decoding.
DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = str | os.PathLike[str] | bytes | BinaryIO

_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif")


class ImageDecodeError(ValueError):
    """An image that cannot be used, with a message a user can act on."""


def decode_image(source: ImageSource, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode any supported image to an upright 8-bit RGB ``PIL.Image``.

    ``name`` is what error messages call the image (defaults to the path); pass the user's file name
    for uploads so that the message points at something they recognise.
    """
    label = name or (str(source) if isinstance(source, str | os.PathLike) else "image")
    data = _read_bytes(source, label)
    if not data:
        raise ImageDecodeError(f"{label}: the file is empty (0 bytes)")
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        raise ImageDecodeError(
            f"{label}: HEIC/HEIF/AVIF photos are not supported; convert it to JPEG or PNG "
            "(on a phone: share or export as JPEG) and try again"
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError(f"{label}: the image has zero size ({width}x{height})")
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{label}: {width}x{height} pixels is larger than the limit of {max_pixels:,} pixels; "
                    "downscale the photo and try again"
                )
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated GIF/PNG/TIFF: the first frame is the picture
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{label}: not a recognised image file (JPEG, PNG, TIFF, BMP, GIF, WebP)") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{label}: refused as a possible decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"{label}: the image is truncated or corrupt ({error})") from None


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


def image_header_problem(path: Path) -> str | None:
    """Cheap readability check for manifest validation: the file exists and has an image header.

    Decoding every pixel of a large dataset on each load would be slow; the header is enough to catch
    missing, empty and non-image files. Full decoding is :func:`decode_image`'s job.
    """
    if not path.is_file():
        return "file not found"
    if path.stat().st_size == 0:
        return "file is empty (0 bytes)"
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as error:
        return f"not a readable image ({error.__class__.__name__})"
    if width <= 0 or height <= 0:
        return f"image has zero size ({width}x{height})"
    return None
