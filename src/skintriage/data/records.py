"""The manifest: one validated row per image, whatever dataset it came from.

Everything downstream (splits, datasets, evaluation) reads a :class:`Manifest`, never a source's own
CSV. A source loader produces raw rows (image location, raw label, ids, metadata, where the row came
from); :func:`build_manifest` maps the raw label through the taxonomy and validates the lot, so every
error can name the source file and row that caused it.

Image locations are relative to the dataset root: a POSIX path (``images/ISIC_0024306.jpg``), or for
images stored in arrays ``dermamnist.npz#train_images/17``.
"""

from __future__ import annotations

import posixpath
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from skintriage.common.errors import ArgumentError, SkintriageError
from skintriage.data.images import decode_array, decode_image, image_header_problem
from skintriage.data.taxonomy import label_map

ACQUISITIONS = ("dermoscopic", "clinical")
SPLITS = ("train", "val", "test")
SEXES = ("male", "female")

# Columns a source loader must provide, and the optional ones filled with "missing" when absent.
RAW_REQUIRED = ("image_id", "image", "raw_label", "origin")
RAW_OPTIONAL = ("lesion_id", "patient_id", "age", "sex", "body_site", "skin_type", "acquisition", "split")
MANIFEST_COLUMNS = (
    "image_id",
    "image",
    "source",
    "raw_label",
    "diagnosis",
    "triage_group",
    "lesion_id",
    "patient_id",
    "age",
    "sex",
    "body_site",
    "skin_type",
    "acquisition",
    "split",
    "score_weight",
    "origin",
)

ARRAY_SEPARATOR = "#"


class ManifestError(SkintriageError, ValueError):
    """A manifest that failed validation; ``problems`` lists every offending row, not only the first."""

    def __init__(self, summary: str, problems: list[str]):
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{summary}:\n  {shown}{more}")
        self.problems = problems


@dataclass(frozen=True)
class Manifest:
    """A validated table of images (``frame``) with the dataset root its image paths are relative to.

    ``missing_images`` holds the rows whose image file could not be found or read, when the manifest
    was built with ``on_missing="report"``; those rows stay in ``frame`` (metadata is still useful for
    counting and auditing) and :meth:`with_images` drops them.
    """

    frame: pd.DataFrame
    root: Path
    missing_images: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame)

    def read_image(self, location: str) -> Image.Image:
        """Decode one image of this manifest (file or array element) to upright RGB."""
        if ARRAY_SEPARATOR in location:
            file_name, key, index = parse_array_location(location)
            return decode_array(_npz_arrays(self.root / file_name)[key][index], name=location)
        return decode_image(self.root / location, name=location)

    def read_image_and_bytes(self, location: str) -> tuple[Image.Image, bytes]:
        """The decoded image and its stored bytes (file contents or raw array), read from disk once.

        The bytes are what exact-duplicate hashing compares; decoding them rather than re-reading the
        file keeps an audit of a large dataset to one read per image.
        """
        if ARRAY_SEPARATOR in location:
            file_name, key, index = parse_array_location(location)
            array = _npz_arrays(self.root / file_name)[key][index]
            return decode_array(array, name=location), array.tobytes()
        data = (self.root / location).read_bytes()
        return decode_image(data, name=location), data

    def with_images(self) -> Manifest:
        if not self.missing_images:
            return self
        missing = set(self.missing_images)
        kept = self.frame[~self.frame["image_id"].isin(missing)].reset_index(drop=True)
        return Manifest(kept, self.root)

    def where(self, *, split: str | None = None, diagnoses: Iterable[str] | None = None) -> Manifest:
        """The rows of one split and/or of the given diagnoses (``None``: any), renumbered from 0.

        The one spelling of "the validation images of the model's classes", used by training, gate fitting
        and evaluation alike. ``missing_images`` keeps the entries of the rows kept, so :meth:`with_images`
        still drops them afterwards.
        """
        keep = pd.Series(True, index=self.frame.index)
        if split is not None:
            if split not in SPLITS:
                raise ArgumentError(f"unknown split {split!r}; expected one of {SPLITS}")
            keep &= self.frame["split"] == split
        if diagnoses is not None:
            keep &= self.frame["diagnosis"].isin(list(diagnoses))
        frame = self.frame[keep].reset_index(drop=True)
        kept = set(frame["image_id"])
        return Manifest(frame, self.root, [image_id for image_id in self.missing_images if image_id in kept])

    def with_splits(self, splits: pd.Series | Iterable[str | None]) -> Manifest:
        frame = self.frame.copy()
        frame["split"] = pd.Series(list(splits), index=frame.index, dtype=object)
        unknown = sorted(set(frame["split"].dropna()) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown split names {unknown}; expected {SPLITS}")
        return Manifest(frame, self.root, self.missing_images)

    @classmethod
    def concat(cls, manifests: list[Manifest], *, root: Path) -> Manifest:
        """Combine manifests from several sources under one common root (image paths are rebased)."""
        frames = []
        for manifest in manifests:
            frame = manifest.frame.copy()
            prefix = posixpath.normpath(Path(manifest.root).resolve().relative_to(root.resolve()).as_posix())
            if prefix != ".":
                frame["image"] = prefix + "/" + frame["image"]
            frames.append(frame)
        combined = pd.concat(frames, ignore_index=True)
        _raise_on_duplicate_ids(combined)
        return cls(combined, root, [m for manifest in manifests for m in manifest.missing_images])


def build_manifest(
    raw: pd.DataFrame,
    *,
    source: str,
    root: Path,
    label_map_name: str,
    acquisition: str | None = None,
    check_images: bool = True,
    on_missing: str = "error",
    progress: bool = False,
) -> Manifest:
    """Validate a source loader's raw rows and turn them into a :class:`Manifest`.

    ``check_images`` opens each image's header (cheap) so that a missing or non-image file fails now,
    with its row named, rather than hours into training. ``on_missing="report"`` keeps going and lists
    the missing images instead (for summaries and audits of metadata-only downloads).
    """
    if on_missing not in ("error", "report"):
        raise ValueError(f"on_missing must be 'error' or 'report', not {on_missing!r}")
    missing_columns = [c for c in RAW_REQUIRED if c not in raw.columns]
    if missing_columns:
        raise ManifestError(
            f"source {source!r}: missing columns", [f"column {c!r} is required" for c in missing_columns]
        )
    frame = raw.reset_index(drop=True).copy()
    for column in RAW_OPTIONAL:
        if column not in frame.columns:
            frame[column] = None
    if acquisition is not None:
        frame["acquisition"] = frame["acquisition"].where(frame["acquisition"].notna(), acquisition)
    frame["source"] = source
    frame["image_id"] = frame["image_id"].astype(str)
    frame["image"] = frame["image"].astype(str)
    if "score_weight" not in frame.columns:
        frame["score_weight"] = 1.0

    problems: list[str] = []
    mapping = label_map(label_map_name)
    diagnoses, groups = [], []
    for raw_label, origin in zip(frame["raw_label"], frame["origin"], strict=True):
        if raw_label is None or (isinstance(raw_label, float) and np.isnan(raw_label)) or str(raw_label).strip() == "":
            problems.append(f"{origin}: the label is empty")
            diagnoses.append(None)
            groups.append(None)
            continue
        diagnosis = mapping.diagnosis_for(raw_label, source=source, where=origin)
        diagnoses.append(diagnosis.code)
        groups.append(str(diagnosis.group))
    frame["diagnosis"] = diagnoses
    frame["triage_group"] = groups

    problems += _check_values(frame)
    problems += _check_paths(frame)
    if problems:
        raise ManifestError(f"source {source!r}: {len(problems)} invalid rows", problems)
    _raise_on_duplicate_ids(frame)

    frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    frame["score_weight"] = frame["score_weight"].astype(float)
    for column in ("lesion_id", "patient_id", "body_site", "skin_type"):
        frame[column] = frame[column].map(_blank_to_none)
    for column in ("lesion_id", "patient_id", "sex", "body_site", "skin_type", "acquisition", "split"):
        values = frame[column].astype(object)
        frame[column] = values.where(values.notna(), None)  # one spelling of "missing": None
    frame = frame[list(MANIFEST_COLUMNS)]

    missing: list[str] = []
    if check_images:
        image_problems = _check_images(frame, root, progress=progress)
        if image_problems and on_missing == "error":
            raise ManifestError(
                f"source {source!r}: {len(image_problems)} images missing or unreadable under {root}",
                [f"{origin} ({location}): {problem}" for _, origin, location, problem in image_problems],
            )
        missing = [image_id for image_id, *_ in image_problems]
    return Manifest(frame, Path(root), missing)


def _blank_to_none(value: object) -> object:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text if text and text.lower() not in ("nan", "unknown", "none") else None


def _check_values(frame: pd.DataFrame) -> list[str]:
    problems = []
    for column, allowed in (("acquisition", ACQUISITIONS), ("split", SPLITS), ("sex", SEXES)):
        for origin, value in zip(frame["origin"], frame[column], strict=True):
            if value is not None and not (isinstance(value, float) and np.isnan(value)) and value not in allowed:
                problems.append(f"{origin}: {column} {value!r} is not one of {allowed}")
    ages = pd.to_numeric(frame["age"], errors="coerce")
    for origin, raw_age, age in zip(frame["origin"], frame["age"], ages, strict=True):
        if _blank_to_none(raw_age) is not None and (np.isnan(age) or not 0 <= age <= 120):
            problems.append(f"{origin}: age {raw_age!r} is not a number between 0 and 120")
    return problems


def _check_paths(frame: pd.DataFrame) -> list[str]:
    """Image locations must stay inside the dataset root: a CSV must not be able to point at /etc/passwd."""
    problems = []
    for origin, location in zip(frame["origin"], frame["image"], strict=True):
        path = location.split(ARRAY_SEPARATOR, 1)[0].replace("\\", "/")
        normalised = posixpath.normpath(path)
        if not path or path.startswith("/") or (len(path) > 1 and path[1] == ":"):
            problems.append(f"{origin}: image path {location!r} must be relative to the dataset root")
        elif normalised == ".." or normalised.startswith("../"):
            problems.append(f"{origin}: image path {location!r} escapes the dataset root")
    return problems


def _raise_on_duplicate_ids(frame: pd.DataFrame) -> None:
    duplicated = frame[frame["image_id"].duplicated(keep=False)]
    if len(duplicated):
        problems = [
            f"image_id {image_id!r} appears in {', '.join(group['origin'])}"
            for image_id, group in duplicated.groupby("image_id", sort=True)
        ]
        raise ManifestError(f"{len(problems)} duplicate image ids", problems)


def _check_images(frame: pd.DataFrame, root: Path, *, progress: bool) -> list[tuple[str, str, str, str]]:
    """Return (image_id, origin, location, problem) for each image that is missing or unreadable."""
    problems = []
    arrays: dict[str, dict[str, int] | str] = {}
    rows = zip(frame["image_id"], frame["origin"], frame["image"], strict=True)
    for image_id, origin, location in tqdm(rows, total=len(frame), desc="checking images", disable=not progress):
        if ARRAY_SEPARATOR in location:
            problem = _array_problem(root, location, arrays)
        else:
            problem = image_header_problem(root / location)
        if problem:
            problems.append((image_id, origin, location, problem))
    return problems


def _array_problem(root: Path, location: str, cache: dict[str, dict[str, int] | str]) -> str | None:
    try:
        file_name, key, index = parse_array_location(location)
    except ValueError:
        return f"array location {location!r} is not of the form FILE.npz#KEY/INDEX"
    if file_name not in cache:
        cache[file_name] = _array_lengths(root / file_name)
    lengths = cache[file_name]
    if isinstance(lengths, str):
        return lengths
    if key not in lengths:
        return f"array {key!r} not in {file_name}"
    if not 0 <= index < lengths[key]:
        return f"index {index} out of range for array {key!r} ({lengths[key]} images)"
    return None


def npz_array_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every array in an ``.npz``, read from the array headers without loading the pixels.

    Raises OSError, ValueError or zipfile.BadZipFile for a file that is not a readable ``.npz``.
    """
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as stream:
                major, _ = np.lib.format.read_magic(stream)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shapes[member.removesuffix(".npy")] = read_header(stream)[0]
    return shapes


def _array_lengths(path: Path) -> dict[str, int] | str:
    """Number of images in each array of an ``.npz``, or the reason it cannot be read."""
    if not path.is_file():
        return "file not found"
    try:
        return {key: shape[0] if shape else 0 for key, shape in npz_array_shapes(path).items()}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        return f"not a readable .npz file ({error})"


def parse_array_location(location: str) -> tuple[str, str, int]:
    """``dermamnist.npz#train_images/17`` -> (``dermamnist.npz``, ``train_images``, 17)."""
    file_name, key_index = location.split(ARRAY_SEPARATOR, 1)
    key, _, index = key_index.rpartition("/")
    return file_name, key, int(index)


@lru_cache(maxsize=4)
def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}
