"""ISIC Archive exports written by the official ``isic-cli``: the only public source of MCC and metastases.

``isic image download --search QUERY FOLDER`` writes ``FOLDER/metadata.csv`` (columns ``isic_id``,
``attribution``, ``copyright_license``, then the image's acquisition and clinical fields in alphabetical
order: ``age_approx``, ``anatom_site_1``..``_5``, ``diagnosis_1``..``diagnosis_5``, ``fitzpatrick_skin_type``,
``image_type``, ``lesion_id``, ``patient_id``, ``sex``, ...) and saves each image as ``<isic_id>.<ext>``
next to it. Several such folders may sit under one root (one per search query): every ``metadata.csv``
below the root is read. Exports made before the archive's 2024 diagnosis hierarchy have the flat
``diagnosis`` and ``benign_malignant`` columns instead and are read too.

The raw label is the deepest filled ``diagnosis_N`` term (the archive's terms are unique at every level,
so the deepest one names the whole path); see ``label_maps/isic_archive.yaml`` for the mapping and the
decisions on coarse-only rows. The archive has no official split.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd

from skintriage.data.sources.files import MetadataError, blank, index_images, normalise_sex, read_table
from skintriage.data.sources.registry import FetchError, Source, register
from skintriage.data.taxonomy import normalise_label

METADATA_NAME = "metadata.csv"
# Deepest level first: the first filled one is the most specific diagnosis the archive has.
DIAGNOSIS_LEVELS = ("diagnosis_5", "diagnosis_4", "diagnosis_3", "diagnosis_2", "diagnosis_1")
LEGACY_DIAGNOSIS = "diagnosis"
LEGACY_MALIGNANCY = "benign_malignant"
# Legacy flat labels that do not say benign or malignant; the loader appends benign_malignant to them.
LEGACY_UNQUALIFIED = frozenset({"other", "adnexal tumor"})

# isic_metadata.fields.ImageTypeEnum (current) and its pre-2024 values "clinical" / "overview".
# DECISION: total-body-photography tiles are crops of standardised 3D whole-body photographs, i.e.
# non-dermoscopic macroscopic photos, so they count as clinical (a distinct, low-resolution domain that
# the image ids and raw metadata still identify).
ACQUISITIONS = {
    "dermoscopic": "dermoscopic",
    "clinical: close-up": "clinical",
    "clinical: overview": "clinical",
    "tbp tile: close-up": "clinical",
    "tbp tile: overview": "clinical",
    "clinical": "clinical",
    "overview": "clinical",
}
# Reflectance confocal microscopy cases: grey-scale microscopy tiles and mosaics plus the device's
# macroscopic guide image. DECISION: refused (with the row named) rather than dropped, so that nothing
# leaves the manifest silently; select photographs in the download query instead.
NOT_PHOTOGRAPHS = frozenset({"rcm: macroscopic", "rcm: tile", "rcm: mosaic"})

# One folder per query, because each `isic image download` writes its own metadata.csv. The
# metastasis term is a level-2 term of the hierarchy (nothing deeper exists), MCC a level-3 one.
FETCH_QUERIES = (
    ("merkel_cell_carcinoma", 'diagnosis_3:"Merkel cell carcinoma"'),
    ("skin_metastasis", 'diagnosis_2:"Skin metastasis of internal solid cancer - non-hematological"'),
)
MANUAL_STEPS = """\
  1. Install the official ISIC Archive client: pip install isic-cli
     (optional: isic user login, which adds images shared with your account).
  2. Download the Merkel cell carcinoma and skin-metastasis images, each query into its own folder
     under one root (each folder gets metadata.csv, <isic_id>.jpg images, attribution.txt, licenses/):
       isic image download --search 'diagnosis_3:"Merkel cell carcinoma"' ROOT/merkel_cell_carcinoma
       isic image download ROOT/skin_metastasis \\
         --search 'diagnosis_2:"Skin metastasis of internal solid cancer - non-hematological"'
     Any other query works the same way, e.g. --search 'image_type:dermoscopic AND diagnosis_1:Malignant'
     (queries use diagnosis_1 ... diagnosis_5; terms: https://www.isic-archive.com/data-dictionary).
  3. Run: skintriage data summarize isic_archive --root ROOT"""


def find_metadata_files(root: Path) -> list[Path]:
    """Every export below ``root``, so that one root can hold one folder per download query."""
    found = sorted(root.rglob(METADATA_NAME))
    if not found:
        raise MetadataError(
            f"{root}: no {METADATA_NAME} found (looked in the folder and its subfolders); "
            f"download one with isic-cli:\n{MANUAL_STEPS}"
        )
    return found


def raw_label(row: dict[str, object]) -> str:
    """The deepest hierarchical term; else the legacy flat diagnosis; else legacy benign/malignant."""
    for column in DIAGNOSIS_LEVELS:
        if not blank(row.get(column)):
            return str(row[column]).strip()
    malignancy = row.get(LEGACY_MALIGNANCY)
    legacy = row.get(LEGACY_DIAGNOSIS)
    if not blank(legacy):
        legacy = str(legacy).strip()
        if normalise_label(legacy) in LEGACY_UNQUALIFIED and not blank(malignancy):
            return f"{legacy} ({str(malignancy).strip()})"
        return legacy
    return "" if blank(malignancy) else str(malignancy).strip()


def acquisition(image_type: object, origin: str) -> str | None:
    """An unknown image type is an error, like an unknown label: it may not be a photograph at all."""
    if blank(image_type):
        return None
    key = normalise_label(image_type)
    if key in NOT_PHOTOGRAPHS:
        raise MetadataError(
            f"{origin}: image_type {image_type!r} is part of a reflectance confocal microscopy case, which this "
            "project does not use; remove these rows, or download with a query that selects photographs "
            "(e.g. --search '... AND image_type:dermoscopic')"
        )
    if key not in ACQUISITIONS:
        raise MetadataError(
            f"{origin}: image_type {image_type!r} is not a known ISIC image type "
            f"({', '.join(sorted(ACQUISITIONS))}); add it to ACQUISITIONS in {__name__}"
        )
    return ACQUISITIONS[key]


def _read_export(path: Path, root: Path, images: dict[str, str]) -> pd.DataFrame:
    table = read_table(path, required=("isic_id",))  # its last column is the added "origin"
    label_columns = [*DIAGNOSIS_LEVELS, LEGACY_DIAGNOSIS, LEGACY_MALIGNANCY]
    if not any(column in table.columns for column in label_columns):
        raise MetadataError(
            f"{path}: no diagnosis column; expected diagnosis_1 ... diagnosis_5 (isic-cli exports) or the "
            f"legacy diagnosis / benign_malignant columns; found {', '.join(map(repr, table.columns[:-1]))}"
        )
    folder = path.parent.relative_to(root).as_posix() if path.parent.is_relative_to(root) else "."
    prefix = "" if folder == "." else folder + "/"
    origins = prefix + table["origin"]
    rows = table.to_dict("records")
    ids = table["isic_id"].str.strip()
    # current exports have the hierarchical anatom_site_1 (broadest level), older ones anatom_site_general
    site = table.get("anatom_site_1", table.get("anatom_site_general"))
    return pd.DataFrame(
        {
            "image_id": ids,
            # an image that is not found is reported where isic-cli would have put it
            "image": [images.get(isic_id, f"{prefix}{isic_id}.jpg") for isic_id in ids],
            "raw_label": [raw_label(row) for row in rows],
            "lesion_id": table.get("lesion_id"),
            "patient_id": table.get("patient_id"),
            "age": table.get("age_approx"),
            "sex": table["sex"].map(normalise_sex) if "sex" in table else None,
            "body_site": site,
            "skin_type": table.get("fitzpatrick_skin_type"),
            "acquisition": [
                acquisition(row.get("image_type"), origin) for row, origin in zip(rows, origins, strict=True)
            ],
            "origin": origins,
        }
    )


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    paths = [metadata] if metadata else find_metadata_files(root)
    images = index_images(root)
    return pd.concat([_read_export(path, root, images) for path in paths], ignore_index=True)


def fetch(destination: Path) -> None:
    """Download the MCC and skin-metastasis images with isic-cli, one folder per query."""
    executable = shutil.which("isic")
    if executable is None:
        raise FetchError(
            f"the ISIC Archive client `isic` is not installed (pip install isic-cli).\n"
            f"To obtain the images by hand:\n{MANUAL_STEPS}"
        )
    for folder, query in FETCH_QUERIES:
        command = [executable, "image", "download", "--search", query, str(destination / folder)]
        # stdin closed: isic-cli asks before a download larger than the free disk space; answer no.
        try:
            status = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
        except OSError as error:
            raise FetchError(
                f"could not run {executable}: {error}.\nTo obtain the images by hand:\n{MANUAL_STEPS}"
            ) from None
        if status != 0:
            raise FetchError(
                f"`isic image download --search '{query}'` failed with exit status {status} (its output is "
                f"above).\nTo obtain the images by hand:\n{MANUAL_STEPS}"
            )


SOURCE = register(
    Source(
        name="isic_archive",
        title="ISIC Archive",
        description="Dermoscopic, clinical and total-body-photography images from the International Skin "
        "Imaging Collaboration archive, selected by search query; the public source of Merkel cell carcinoma "
        "and cutaneous metastasis images. Official patient and lesion ids; hierarchical diagnoses, many "
        "histopathologically confirmed (column diagnosis_confirm_type).",
        licence="Per image, in the copyright_license column: CC-0, CC-BY or CC-BY-NC (texts in licenses/); "
        "attribution.txt lists the contributors to credit",
        citation="International Skin Imaging Collaboration. ISIC Archive, https://www.isic-archive.com; "
        "cite the contributing collections listed in attribution.txt (and their DOIs).",
        obtain=MANUAL_STEPS,
        label_map="isic_archive",
        read=read,
        acquisition=None,
        split_fractions=(("train", 0.7), ("val", 0.15), ("test", 0.15)),
        fetch=fetch,
    )
)
