"""Small helpers the source loaders share: reading metadata tables and finding image files."""

from __future__ import annotations

import csv
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from skintriage.common.errors import SkintriageError
from skintriage.data.images import IMAGE_SUFFIXES
from skintriage.data.sources.registry import FetchError


class MetadataError(SkintriageError, ValueError):
    """A metadata table that cannot be read as the source expects; the message names file and row."""


def read_table(path: Path, *, required: Sequence[str], delimiter: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV as strings, with a column ``origin`` = ``file:line`` for error messages.

    Malformed rows (wrong number of fields, unbalanced quotes) and missing columns raise
    :class:`MetadataError` naming the file, the line and the column, rather than pandas' parser trace.
    """
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise MetadataError(f"{path}: not UTF-8 text (byte {error.start}); is this really a CSV file?") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise MetadataError(f"{path}: the file is empty or has no header row")
    if delimiter is None:
        delimiter = "\t" if lines[0].count("\t") > lines[0].count(",") else ","
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = [name.strip() for name in next(reader)]
        twice = sorted({name for name in header if name and header.count(name) > 1})
        if twice:
            raise MetadataError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the header")
        missing = [column for column in required if column not in header]
        if missing:
            raise MetadataError(
                f"{path}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, header))}"
            )
        rows, origins = [], []
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(header):
                raise MetadataError(f"{path}:{reader.line_num}: expected {len(header)} fields, found {len(row)}")
            rows.append(row)
            origins.append(f"{path.name}:{reader.line_num}")
    except csv.Error as error:
        raise MetadataError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame["origin"] = origins
    return frame


def list_images(root: Path, *, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[str]:
    """Every image file under ``root`` (POSIX paths relative to it, sorted), skipping macOS ``._`` files."""
    wanted = {s.lower() for s in suffixes}
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            if os.path.splitext(name)[1].lower() in wanted and not name.startswith("._"):
                found.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


def index_images(root: Path, *, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> dict[str, str]:
    """Map each image's file stem (e.g. ``ISIC_0024306``) to its path relative to ``root``.

    Datasets unpack into varying folder layouts (HAM10000 comes in two ``part`` folders); indexing by
    stem finds the image wherever it landed. A stem found twice is ambiguous and raises.
    """
    found: dict[str, str] = {}
    for relative in list_images(root, suffixes=suffixes):
        stem = Path(relative).stem
        if stem in found:
            raise MetadataError(f"{root}: two images named {stem!r}: {found[stem]} and {relative}")
        found[stem] = relative
    return found


def find_metadata(root: Path, candidates: tuple[str, ...]) -> Path:
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise MetadataError(f"{root}: no metadata file found; expected one of {', '.join(candidates)}")


def normalise_sex(value: object) -> str | None:
    text = "" if blank(value) else str(value).strip().lower()
    return {"male": "male", "m": "male", "female": "female", "f": "female"}.get(text)


def parse_codes(table: pd.DataFrame, column: str, codes: Mapping[str, object]) -> list[object]:
    """Decode a coded column; a value outside the code list names its row instead of becoming a default."""
    decoded = []
    for value, origin in zip(table[column], table["origin"], strict=True):
        key = value.strip().lower()
        if key not in codes:
            raise MetadataError(f"{origin}: {column} {value!r} is not one of {', '.join(codes)}")
        decoded.append(codes[key])
    return decoded


def blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() == ""


def download(url: str, destination: Path, *, manual_steps: str, timeout: float = 20.0) -> Path:
    """Download ``url`` into ``destination`` (a file path), or raise FetchError with the manual steps.

    Writes to a temporary name and renames on success, so an interrupted download never leaves a
    file that looks complete.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise FetchError(f"could not download {url}: {reason}.\nTo obtain it by hand:\n{manual_steps}") from None
    partial.replace(destination)
    return destination


def read_class_table(
    root: Path,
    *,
    metadata: Path | None,
    label_column: str,
    id_prefix: str,
    folder_label: Callable[[str], str] = str,
) -> pd.DataFrame:
    """Raw rows of an atlas-style source: ``metadata.csv`` (``file``, ``label_column``[, ``md5_original``])
    when present, else one folder per class (the label is ``folder_label(folder name)``).

    Byte-identical originals share ``md5_original``, which becomes their lesion id so that copies filed
    under two classes can never land in different splits. Image ids are ``id_prefix + folder/stem``.
    """
    path = metadata or root / "metadata.csv"
    if path.is_file():
        table = read_table(path, required=("file", label_column))
        files, labels, origins = table["file"].str.strip(), table[label_column].str.strip(), table["origin"]
        lesion_ids = (
            table["md5_original"].map(lambda md5: None if blank(md5) else f"md5:{md5.strip()}")
            if "md5_original" in table
            else None
        )
    else:
        files = pd.Series(list_images(root), dtype=object)
        labels = files.map(lambda file: folder_label(Path(file).parent.name))
        origins, lesion_ids = files, None
    return pd.DataFrame(
        {
            "image_id": files.map(lambda file: id_prefix + Path(file).parent.name + "/" + Path(file).stem),
            "image": files,
            "raw_label": labels,
            "lesion_id": lesion_ids,
            "origin": origins,
        }
    )
