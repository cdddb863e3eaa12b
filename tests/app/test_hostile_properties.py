"""Property-based tests (hypothesis) of every parser a user's input reaches: the image decoder, the metadata
CSV readers and manifest validation, and the clinical-context parsing of the library and the demo.

The property is always the same: any input gives a result or the project's own error with a clear
message, never a raw KeyError/IndexError/OverflowError/struct.error from deep inside a parser.
`max_examples` is kept modest so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util
import io
import math
import string
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from skintriage.data.images import ImageDecodeError, decode_image
from skintriage.data.records import ManifestError
from skintriage.data.sources import folder  # noqa: F401  (registers the source)
from skintriage.data.sources.files import MetadataError, read_table
from skintriage.data.sources.registry import get_source
from skintriage.data.taxonomy import UnknownLabelError
from skintriage.triage.referral import SITES, ClinicalContext
from tests.helpers import REPO


def fast(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# ---------------------------------------------------------------------------------------------------------------
# the image decoder

MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "I;16", "I", "F")
FORMAT_MODES = {  # modes each format can store
    "PNG": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"),
    "JPEG": ("RGB", "L", "CMYK"),
    "TIFF": ("RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16", "I", "F"),
    "BMP": ("RGB", "L", "P", "1"),
    "GIF": ("P", "L"),
    "WEBP": ("RGB", "RGBA"),
}


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@st.composite
def random_images(draw) -> tuple[bytes, tuple[int, int], str]:
    """(encoded bytes, upright (width, height), format) of a random-pixel image of a random mode, size and format."""
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[fmt]))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    elif mode in ("I", "F"):
        image = image.convert("L").convert(mode)
    elif mode == "PA":
        image = image.convert("RGBA").convert("PA")
    else:
        image = image.convert(mode)
    orientation = draw(st.sampled_from((1, 3, 6, 8))) if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else 1
    options = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    upright = (height, width) if orientation in (6, 8) else (width, height)
    return encode(image, fmt, **options), upright, fmt


@fast(80)
@given(random_images())
def test_valid_images_of_any_mode_and_size_decode_to_upright_rgb(case):
    data, upright, fmt = case
    image = decode_image(data, name=f"random.{fmt.lower()}")
    assert image.mode == "RGB"
    assert image.size == upright


VALID_FILES = {
    fmt: encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)), fmt)
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
}
VALID_FILES["PROGRESSIVE_JPEG"] = encode(
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8)), "JPEG", progressive=True
)


def must_decode_or_refuse(data: bytes, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about odd but readable files
        try:
            image = decode_image(data, name=name)
        except ImageDecodeError as error:
            assert str(error).startswith(f"{name}: ") and len(str(error)) > len(name) + 10
            assert "Traceback" not in str(error)
        else:
            assert image.mode == "RGB" and image.width > 0 and image.height > 0


@fast(120)
@given(st.binary(max_size=1024))
@example(b"")
@example(b"\x89PNG\r\n\x1a\n")
@example(b"\xff\xd8\xff")
@example(b"II*\x00")
@example(b"GIF89a")
def test_arbitrary_bytes_only_ever_raise_the_decoder_error(data):
    must_decode_or_refuse(data, "upload.jpg")


@fast(120)
@given(st.sampled_from(sorted(VALID_FILES)), st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_images_decode_or_raise_the_decoder_error(fmt, fraction):
    data = VALID_FILES[fmt]
    must_decode_or_refuse(data[: int(len(data) * fraction)], f"cut.{fmt.lower()}")


@fast(200)
@given(
    st.sampled_from(sorted(VALID_FILES)),
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), min_size=1, max_size=6),
)
@example("TIFF", [(130, 1)])  # found by this test: Pillow raised TypeError("Missing dimensions")
def test_corrupted_headers_decode_or_raise_the_decoder_error(fmt, edits):
    """Bytes changed near the start, where the header's sizes, offsets and counts live."""
    data = bytearray(VALID_FILES[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    must_decode_or_refuse(bytes(data), f"corrupt.{fmt.lower()}")


# ---------------------------------------------------------------------------------------------------------------
# metadata CSV readers and manifest validation

CSV_ALPHABET = st.sampled_from(list(string.ascii_letters + string.digits + ',;"\t\n\r _-./\\#\x00é€'))
CSV_ERRORS = (MetadataError, ManifestError, UnknownLabelError)
COLUMNS = ("image", "label", "image_id", "patient_id", "lesion_id", "age", "sex", "split", "acquisition", "origin")
VALUES = ("mel", "nv", "Merkel cell carcinoma", "benign", "a.jpg", "../x.jpg", "/etc/passwd", "", " ", "45", "-3",
          "male", "X", "train", "test", "dermoscopic", "nan", '"', "a,b", "1e400")  # fmt: skip


@st.composite
def csv_texts(draw) -> str:
    """Mostly well-formed tables with odd headers and values, sometimes arbitrary text."""
    if draw(st.booleans()):
        return draw(st.text(CSV_ALPHABET, max_size=200))
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=6))
    rows = draw(
        st.lists(
            st.lists(st.sampled_from(VALUES) | st.text(CSV_ALPHABET, max_size=8), min_size=0, max_size=7),
            max_size=5,
        )
    )
    return "\n".join(",".join(row) for row in [header, *rows]) + draw(st.sampled_from(["", "\n", "\r\n"]))


def write_csv(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "manifest.csv"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("csv_root")
    Image.new("RGB", (8, 8)).save(root / "a.jpg")
    return root


@fast(150)
@given(csv_texts())
@example("image,label,image\na.jpg,mel,a.jpg\n")  # a column named twice
@example("image,label\na.jpg,mel\na.jpg,mel\n")  # one image twice
@example("image,label,origin\na.jpg,mel,x\n")  # a column the reader uses itself
@example("image,label,age\na.jpg,mel,1e400\n")
def test_folder_manifest_csv_gives_a_manifest_or_a_clear_error(csv_root, text):
    path = write_csv(csv_root, text)
    try:
        manifest = get_source("folder").load(csv_root, metadata=path, check_images=False)
    except CSV_ERRORS as error:
        message = str(error)
        assert "manifest.csv" in message or "folder" in message, message
        assert "Traceback" not in message
    else:
        assert set(manifest.frame["diagnosis"]) <= {"mel", "nv", "mcc"}


@fast(80)
@given(st.binary(max_size=200))
def test_read_table_of_arbitrary_bytes_raises_only_metadata_error_naming_the_file(tmp_path_factory, data):
    path = write_csv(tmp_path_factory.mktemp("bytes"), data)
    try:
        frame = read_table(path, required=("image", "label"))
    except MetadataError as error:
        assert str(error).startswith(str(path)), str(error)
    else:
        assert {"image", "label", "origin"} <= set(frame.columns)


def test_a_malformed_row_is_named_by_line(tmp_path):
    path = write_csv(tmp_path, 'image,label\na.jpg,mel\nb.jpg,"nv\n')
    with pytest.raises(MetadataError, match=r"manifest.csv:\d+: malformed CSV"):
        read_table(path, required=("image", "label"))
    path = write_csv(tmp_path, "image,label\na.jpg,mel\nb.jpg,nv,extra\n")
    with pytest.raises(MetadataError, match=r"manifest.csv:3: expected 2 fields, found 3"):
        read_table(path, required=("image", "label"))
    path = write_csv(tmp_path, b"image,label\na.jpg,m\xe9l\n")
    with pytest.raises(MetadataError, match=r"manifest.csv: not UTF-8 text \(byte 19\)"):
        read_table(path, required=("image", "label"))


# ---------------------------------------------------------------------------------------------------------------
# clinical context: the library's ClinicalContext and the demo's context_from


@fast(150)
@given(st.none() | st.integers(-(10**20), 10**20), st.none() | st.text(max_size=20) | st.sampled_from(SITES))
def test_clinical_context_accepts_valid_values_and_refuses_others_with_value_error(age, site):
    valid = (age is None or 0 <= age <= 120) and (site is None or site.strip().lower() in SITES)
    try:
        context = ClinicalContext(age=age, site=site)
    except ValueError as error:
        assert not valid
        assert ("age must be between 0 and 120" in str(error)) or ("unknown body site" in str(error))
    else:
        assert valid and context.age == age


@pytest.fixture(scope="module")
def demo_module():
    """app.py imported as a module (it defines the context parsing; importing it starts no server)."""
    spec = importlib.util.spec_from_file_location("skintriage_demo_app", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# as the API may send them: nothing, numbers, numeric or other text (the age box is a text box)
AGES = (
    st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-200, 200).map(float)
    | st.integers(-5, 130).map(str)
    | st.text(max_size=6)
)


@fast(150)
@given(
    AGES,
    st.none() | st.sampled_from(SITES) | st.text(max_size=12),
    st.none()
    | st.lists(st.sampled_from(["Immune suppression", "Previous Merkel cell carcinoma"]) | st.text(max_size=10))
    | st.text(max_size=10)
    | st.integers(),
)
@example(math.inf, None, [])
@example("seventy", "face", [])
@example(72, 5, "Immune suppression")
@example(math.nan, None, [])
@example(None, None, ["not a finding"])
def test_demo_context_from_gives_a_context_or_a_value_error(demo_module, age, site, flags):
    try:
        context = demo_module.context_from(age, site, flags)
    except ValueError as error:
        assert str(error) and "Traceback" not in str(error)
    else:
        assert isinstance(context, ClinicalContext) and isinstance(flags, list | None)
        number = float(age) if isinstance(age, float | str) and str(age).strip() else None
        assume(number is not None and math.isfinite(number))
        assert context.age == int(number)
