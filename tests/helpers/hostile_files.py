"""Hostile and odd image files, each written into a folder with the outcome every entry point must give.

`write_cases(folder)` writes one file per :class:`Case` and returns the cases. A case either expects a
refusal (`problem`: a regex the user-facing message must match, besides naming the file) or a prediction;
`same_as` names another case whose prediction must be identical (an EXIF-rotated JPEG and its upright
pixels saved as PNG; an animated GIF and its first frame). `header_ok` marks a bad file whose header is
fine, so that the manifest's cheap header check passes it and the dataset refuses it when decoding.

Import as `from tests.helpers.hostile_files import ...`.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HUGE_JPEG_SIZE = (12000, 9000)  # 108 MP: a Samsung 108 MP phone photo
HEIC_BYTES = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00\x00\x00\x08free" * 8


@dataclass(frozen=True)
class Case:
    file: str
    what: str
    problem: str | None = None  # regex of the refusal message; None: a prediction is expected
    same_as: str | None = None  # a case whose prediction must be the same
    header_ok: bool = False  # a refusal the manifest's header check cannot see (found when decoding)
    non_skin: bool = False  # the uncertainty gate must say it cannot assess it

    @property
    def refused(self) -> bool:
        return self.problem is not None


NOT_AN_IMAGE = r"not a recognised image file \(JPEG, PNG, TIFF, BMP, GIF, WebP\)"
CASES = (
    Case("text_renamed.jpg", "a text file renamed .jpg", NOT_AN_IMAGE),
    Case("truncated.jpg", "a JPEG cut in half", r"the image is truncated or corrupt", header_ok=True),
    Case("empty.jpg", "a zero-byte file", r"file is empty \(0 bytes\)"),
    Case("bomb.png", "a 1 kB PNG whose header claims 30000x30000", r"refused as a possible decompression bomb"),
    Case(
        "huge_header.png",
        "a PNG whose header claims 12000x9000 (non-JPEG over the pixel limit)",
        r"12000x9000 pixels is larger than the limit of 40,000,000 pixels; downscale the photo",
    ),
    Case("heic_photo.heic", "an iPhone HEIC photo (ftyp heic)", r"HEIC/HEIF/AVIF .*convert it to JPEG or PNG"),
    Case("huge_12000x9000.jpg", "a 108 MP phone JPEG (decoded at 1/2 scale)"),
    Case("tiny_1x1.png", "a 1x1 image"),
    Case("panorama_17000x120.jpg", "a 17000x120 strip (wider than WebP's 16383 px)"),
    Case("gray16.tif", "a 16-bit grayscale TIFF"),
    Case("gray16.png", "a 16-bit grayscale PNG", same_as="gray16.tif"),
    Case("cmyk.jpg", "a CMYK JPEG"),
    Case("rgba.png", "an RGBA PNG with transparent corners"),
    Case("palette.png", "a palette PNG"),
    Case("palette_transparent.png", "a palette PNG with a transparent colour"),
    Case("grayscale.jpg", "an 8-bit grayscale JPEG"),
    Case("exif6.jpg", "a JPEG stored sideways, EXIF orientation 6", same_as="exif6_upright.png"),
    Case("exif6_upright.png", "the pixels of exif6.jpg rotated by hand"),
    Case("exif8.jpg", "a JPEG stored sideways, EXIF orientation 8", same_as="exif8_upright.png"),
    Case("exif8_upright.png", "the pixels of exif8.jpg rotated by hand"),
    Case("animated.gif", "an animated GIF (3 frames)", same_as="animated_frame0.png"),
    Case("animated_frame0.png", "the first frame of animated.gif"),
    # The uncertainty gate flags 21 of the 26 bundled sample photos (experiments/referral_engine/results.md).
    # With the bundled model, of scikit-image's photos these pass the gate (not 'cannot assess'): camera.png
    # (refer, on probability), chelsea.png (a cat: urgent, on probability), clock_motion.png (refer),
    # text.png (refer) and retina.jpg, which is ROUTINE. Only two flagged ones are used here.
    Case("nonskin_astronaut.png", "a non-skin photo (scikit-image astronaut)", non_skin=True),
    Case("nonskin_coffee.png", "a non-skin photo (scikit-image coffee)", non_skin=True),
)
BY_FILE = {case.file: case for case in CASES}


def lesion(size: tuple[int, int] = (320, 240), *, seed: int = 0) -> Image.Image:
    """A brown, off-centre blob on skin tone: asymmetric, so a rotation changes what the model sees."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - 0.42 * height) / (0.3 * height)) ** 2 + ((xx - 0.38 * width) / (0.25 * width)) ** 2 < 1
    rgb = np.where(inside[..., None], [110, 70, 50], [225, 180, 160]).astype(np.int64)
    rgb[: height // 5, :, :] -= 40  # a dark band along the top edge
    noise = np.random.default_rng(seed).integers(-12, 12, rgb.shape)
    return Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


def huge_jpeg(path: Path, size: tuple[int, int] = HUGE_JPEG_SIZE) -> Path:
    """A photo-like JPEG of `size` (smooth skin, one lesion): about 2 MB for 12000x9000, written in ~1 s."""
    image = Image.new("RGB", size, (225, 180, 160))
    width, height = size
    ImageDraw.Draw(image).ellipse(
        (int(0.3 * width), int(0.3 * height), int(0.65 * width), int(0.7 * height)), fill=(110, 70, 50)
    )
    image.save(path, quality=85)
    return path


def _exif_pair(folder: Path, orientation: int) -> None:
    """exif{N}.jpg stored sideways with the EXIF tag; exif{N}_upright.png: its decoded pixels rotated by hand."""
    stored = lesion((320, 240), seed=orientation)
    exif = stored.getexif()
    exif[0x0112] = orientation
    data = jpeg_bytes(stored, exif=exif)
    (folder / f"exif{orientation}.jpg").write_bytes(data)
    with Image.open(io.BytesIO(data)) as decoded:
        pixels = decoded.convert("RGB")  # the stored pixels, orientation ignored
    # 6: display turned 90 degrees clockwise; 8: counter-clockwise (as ImageOps.exif_transpose does)
    turn = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}[orientation]
    pixels.transpose(turn).save(folder / f"exif{orientation}_upright.png")


def write_cases(folder: Path, *, cases: tuple[Case, ...] = CASES) -> list[Case]:
    """Write every case's file into `folder` (created if needed); returns the cases written."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {case.file for case in cases}
    base = lesion()
    writers = {
        "text_renamed.jpg": lambda p: p.write_text("Dear doctor, please find the photo attached.\n"),
        "truncated.jpg": lambda p: p.write_bytes(jpeg_bytes(base)[:2000]),
        "empty.jpg": lambda p: p.write_bytes(b""),
        "bomb.png": lambda p: p.write_bytes(png_header_only(30_000, 30_000)),
        "huge_header.png": lambda p: p.write_bytes(png_header_only(*HUGE_JPEG_SIZE)),
        "heic_photo.heic": lambda p: p.write_bytes(HEIC_BYTES),
        "huge_12000x9000.jpg": huge_jpeg,
        "tiny_1x1.png": lambda p: Image.new("RGB", (1, 1), (120, 80, 60)).save(p),
        "panorama_17000x120.jpg": lambda p: base.resize((17000, 120)).save(p, quality=85),
        "gray16.tif": lambda p: Image.fromarray(_gray16(base)).save(p),
        "gray16.png": lambda p: Image.fromarray(_gray16(base)).save(p),
        "cmyk.jpg": lambda p: base.convert("CMYK").save(p, quality=92),
        "rgba.png": lambda p: _rgba(base).save(p),
        "palette.png": lambda p: base.convert("P", palette=Image.Palette.ADAPTIVE).save(p),
        "palette_transparent.png": lambda p: _palette_transparent(base).save(p),
        "grayscale.jpg": lambda p: base.convert("L").save(p, quality=92),
        "animated.gif": lambda p: _animated(p),
        "nonskin_astronaut.png": lambda p: _skimage_photo("astronaut").save(p),
        "nonskin_coffee.png": lambda p: _skimage_photo("coffee").save(p),
    }
    for orientation in (6, 8):
        if f"exif{orientation}.jpg" in wanted or f"exif{orientation}_upright.png" in wanted:
            _exif_pair(folder, orientation)
    for name, write in writers.items():
        if name in wanted:
            write(folder / name)
    missing = sorted(name for name in wanted if not (folder / name).exists())
    assert not missing, f"no writer for {missing}"
    return list(cases)


def _gray16(image: Image.Image) -> np.ndarray:
    return (np.asarray(image.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)  # full 16-bit range


def _rgba(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = np.full((image.height, image.width), 255, dtype=np.uint8)
    alpha[:40, :40] = 0  # a transparent corner: shown (and decoded) as white
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def _palette_transparent(image: Image.Image) -> Image.Image:
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    return palette


def _animated(path: Path) -> None:
    frames = [lesion(seed=seed).convert("P", palette=Image.Palette.ADAPTIVE) for seed in (1, 2, 3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)
    with Image.open(path) as gif:  # the first frame as the GIF decoder gives it, saved losslessly
        gif.convert("RGB").save(path.with_name("animated_frame0.png"))


def _skimage_photo(name: str) -> Image.Image:
    from skimage import data  # a dev dependency: its bundled sample photos are the project's non-skin set

    return Image.fromarray(getattr(data, name)())
