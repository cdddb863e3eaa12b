"""HAM10000 (Tschandl et al. 2018): 10,015 dermoscopic images of 7,470 lesions, 7 diagnoses.

Reads the official metadata table (``HAM10000_metadata.csv`` from Kaggle or ``.tab`` from Harvard
Dataverse, with images in ``HAM10000_images_part_1/`` and ``_part_2/``) and the re-hosted subset whose
CSV names each image's ``file`` (``ham10000_subset_metadata.csv``). HAM10000 has no official split.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd

from skintriage.data.sources.files import download, find_metadata, index_images, normalise_sex, read_table
from skintriage.data.sources.registry import Source, register

METADATA_CANDIDATES = (
    "ham10000_subset_metadata.csv",
    "HAM10000_metadata.csv",
    "HAM10000_metadata.tab",
    "HAM10000_metadata",
)
DATAVERSE_URL = "https://dataverse.harvard.edu/api/access/dataset/:persistentId/?persistentId=doi:10.7910/DVN/DBW86T"
MANUAL_STEPS = """\
  1. Open https://doi.org/10.7910/DVN/DBW86T (Harvard Dataverse) and accept the CC BY-NC 4.0 terms.
  2. Download HAM10000_metadata.tab, HAM10000_images_part_1.zip and HAM10000_images_part_2.zip
     (and, for the ISIC 2018 test set, ISIC2018_Task3_Test_Images.zip and its ground truth).
  3. Unzip everything into one folder and run: skintriage data summarize ham10000 --root FOLDER"""


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    path = metadata or find_metadata(root, METADATA_CANDIDATES)
    table = read_table(path, required=("lesion_id", "image_id", "dx"))
    if "file" in table.columns:
        images = table["file"]
    else:
        index = index_images(root)
        images = table["image_id"].map(lambda image_id: index.get(image_id, f"{image_id}.jpg"))
    return pd.DataFrame(
        {
            "image_id": table["image_id"],
            "image": images,
            "raw_label": table["dx"],
            "lesion_id": table["lesion_id"],
            "age": table.get("age"),
            "sex": table["sex"].map(normalise_sex) if "sex" in table else None,
            "body_site": table.get("localization"),
            "origin": table["origin"],
        }
    )


def fetch(destination: Path) -> None:
    archive = download(DATAVERSE_URL, destination / "HAM10000_dataverse.zip", manual_steps=MANUAL_STEPS)
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(destination)
    for part in destination.glob("HAM10000_images_part_*.zip"):
        with zipfile.ZipFile(part) as images:
            images.extractall(destination / part.stem)


SOURCE = register(
    Source(
        name="ham10000",
        title="HAM10000",
        description="10,015 dermoscopic images of 7,470 pigmented lesions from Vienna and Queensland, 7 diagnoses "
        "(over half histopathologically confirmed); lesion ids group repeat images of one lesion.",
        licence="CC BY-NC 4.0 (non-commercial research, attribution)",
        citation="Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset. Sci Data 5, 180161 (2018). "
        "doi:10.7910/DVN/DBW86T",
        obtain=MANUAL_STEPS,
        label_map="isic2018",
        read=read,
        acquisition="dermoscopic",
        split_fractions=(("train", 0.85), ("val", 0.15)),
        fetch=fetch,
    )
)
