"""The shared decoder: every odd file a user or a dataset can hand us."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, features

from skintriage.data.images import (
    DECODED_FORMATS,
    HEIF_REFUSED,
    IMAGE_SUFFIXES,
    NOT_AN_IMAGE,
    PHOTO_SUFFIXES,
    REFUSED_SUFFIXES,
    ImageDecodeError,
    decode_array,
    decode_image,
    to_rgb,
)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("L", "JPEG"), ("1", "PNG"), ("CMYK", "JPEG"), ("RGB", "WEBP")],
)
def test_every_mode_becomes_rgb_of_the_same_size(mode, fmt):
    image = Image.new("RGB", (30, 20), (200, 40, 10)).convert(mode)
    decoded = decode_image(encode(image, fmt), name="upload.img")
    assert decoded.mode == "RGB"
    assert decoded.size == (30, 20)


def test_transparent_pixels_are_flattened_onto_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode_image(encode(image, "PNG")).getpixel((1, 1)) == (255, 255, 255)


def test_cmyk_colour_is_converted_not_inverted():
    red = decode_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    r, g, b = red.getpixel((4, 4))
    assert r > 200 and g < 50 and b < 50


def test_sixteen_bit_grayscale_uses_the_full_range():
    ramp = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    for fmt in ("PNG", "TIFF"):
        decoded = np.asarray(decode_image(encode(Image.fromarray(ramp), fmt)))
        assert decoded.shape == (8, 64, 3)
        assert decoded.min() == 0 and decoded.max() == 255


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 128, 0))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display it turned 90 degrees clockwise
    upright = decode_image(encode(image, "JPEG", exif=exif, quality=95))
    assert upright.size == (20, 40)
    r, g, _ = upright.getpixel((10, 2))  # the left band is now on top
    assert r > 200 and g < 80


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, _, b = decode_image(data).getpixel((4, 4))
    assert r > 200 and b < 50


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is a text file, renamed to .jpg\n", "not a recognised image"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    ],
)
def test_bad_bytes_are_refused_with_the_name(data, message):
    with pytest.raises(ImageDecodeError, match=message) as caught:
        decode_image(data, name="IMG_0042.jpg")
    assert "IMG_0042.jpg" in str(caught.value)


def test_truncated_jpeg_is_refused():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], name="half.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match=r"bomb|larger than the limit"):
        decode_image(png_header_only(60_000, 60_000), name="bomb.png")


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match="100x100 pixels is larger than the limit of 5,000"):
        decode_image(data, name="big.png", max_pixels=5000)


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_listed_suffix_names_a_format_the_decoder_reads(tmp_path, suffix):
    (fmt,) = [name for name, suffixes in DECODED_FORMATS.items() if suffix in suffixes]
    assert Image.registered_extensions()[suffix] == fmt.upper()  # Pillow names the same format
    path = tmp_path / f"photo{suffix}"
    Image.new("RGB", (24, 16), (120, 80, 60)).save(path)  # Pillow picks the format from the suffix
    assert decode_image(path).size == (24, 16)
    assert fmt in NOT_AN_IMAGE  # and the refusal of a non-image names it


def test_photo_suffixes_are_the_decoded_ones_and_the_refused_ones():
    assert set(PHOTO_SUFFIXES) == set(IMAGE_SUFFIXES) | set(REFUSED_SUFFIXES)
    assert not set(IMAGE_SUFFIXES) & set(REFUSED_SUFFIXES)
    assert all(suffix == suffix.lower() for suffix in PHOTO_SUFFIXES)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow cannot write AVIF")
def test_an_avif_photo_is_refused_with_the_advice_to_convert_it():
    data = encode(Image.new("RGB", (24, 16), (120, 80, 60)), "AVIF")
    with pytest.raises(ImageDecodeError, match="convert it to JPEG or PNG") as caught:
        decode_image(data, name="IMG_0042.avif")
    assert str(caught.value) == f"IMG_0042.avif: {HEIF_REFUSED}"


def test_missing_file_and_directory_are_named(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"nope.jpg: file not found"):
        decode_image(tmp_path / "nope.jpg", name="nope.jpg")
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        decode_image(tmp_path)


def test_decode_array_handles_gray_float_and_alpha():
    assert decode_array(np.zeros((5, 6), dtype=np.uint8), name="a").size == (6, 5)
    floats = decode_array(np.full((4, 4, 3), 0.5, dtype=np.float32), name="f")
    assert floats.getpixel((0, 0)) == (128, 128, 128)
    assert decode_array(np.zeros((4, 4, 4), dtype=np.uint8), name="rgba").getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageDecodeError, match=r"dermamnist.npz#train_images/3: array of shape"):
        decode_array(np.zeros((4, 0, 3), dtype=np.uint8), name="dermamnist.npz#train_images/3")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_either_decode_to_rgb_or_raise_the_decoder_error(data):
    try:
        image = decode_image(data, name="fuzz")
    except ImageDecodeError as error:
        assert str(error).startswith("fuzz: ")
    else:
        assert image.mode == "RGB"


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "CMYK", "I", "F", "1"]),
    st.integers(1, 40),
    st.integers(1, 40),
)
def test_to_rgb_accepts_every_mode_and_size(mode, width, height):
    image = Image.new(mode, (width, height))
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (width, height)
