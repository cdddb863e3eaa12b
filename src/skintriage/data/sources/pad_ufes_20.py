"""PAD-UFES-20 (Pacheco et al. 2020): 2,298 smartphone photos of 1,641 lesions from 1,373 patients.

Reads the official ``metadata.csv``; images (``img_id``, e.g. ``PAT_46_881_939.png``) are found
anywhere under the root, as the release splits them over ``imgs_part_1..3``. Patient ids are real,
so splits group by patient.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skintriage.data.sources.files import blank, index_images, normalise_sex, read_table
from skintriage.data.sources.registry import Source, register

FITZPATRICK = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
MANUAL_STEPS = """\
  1. Download the dataset zip from Mendeley Data: https://data.mendeley.com/datasets/zr7vgbcyr2/1
     (CC BY 4.0).
  2. Unzip it, then unzip images.zip (imgs_part_1..3) inside it, so that metadata.csv and the image
     folders sit under one ROOT, and run: skintriage data summarize pad_ufes_20 --root ROOT"""


def fitzpatrick_type(value: object) -> str | None:
    """PAD-UFES-20 writes the Fitzpatrick type as a float (``3.0``); an unparseable value is a missing one."""
    if blank(value):
        return None
    try:
        return FITZPATRICK.get(int(float(str(value))))
    except ValueError:
        return None


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    table = read_table(metadata or root / "metadata.csv", required=("patient_id", "lesion_id", "diagnostic", "img_id"))
    index = index_images(root)
    return pd.DataFrame(
        {
            "image_id": table["img_id"].map(lambda name: Path(name).stem),
            "image": table["img_id"].map(lambda name: index.get(Path(name).stem, name)),
            "raw_label": table["diagnostic"],
            "patient_id": table["patient_id"],
            "lesion_id": table["patient_id"] + "/" + table["lesion_id"],
            "age": table.get("age"),
            "sex": table["gender"].map(normalise_sex) if "gender" in table else None,
            "body_site": table["region"].str.lower() if "region" in table else None,
            "skin_type": table["fitspatrick"].map(fitzpatrick_type) if "fitspatrick" in table else None,
            "origin": table["origin"],
        }
    )


SOURCE = register(
    Source(
        name="pad_ufes_20",
        title="PAD-UFES-20",
        description="Smartphone clinical photos of skin lesions from Brazil with patient metadata (age, Fitzpatrick "
        "type, region, symptoms), 6 diagnoses, biopsy-confirmed for all cancers.",
        licence="CC BY 4.0",
        citation="Pacheco AGC et al. PAD-UFES-20: a skin lesion dataset composed of patient data and clinical "
        "images collected from smartphones. Data in Brief 32, 106221 (2020). doi:10.17632/zr7vgbcyr2.1",
        obtain=MANUAL_STEPS,
        label_map="pad_ufes_20",
        read=read,
        acquisition="clinical",
        split_fractions=(("train", 0.7), ("val", 0.15), ("test", 0.15)),
    )
)
