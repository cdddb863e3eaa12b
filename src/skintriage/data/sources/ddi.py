"""Stanford Diverse Dermatology Images (DDI, Daneshjou et al. 2022): 656 clinical photos, 78 diagnoses.

Every image is biopsy-proven and the set is balanced across Fitzpatrick skin types I-II, III-IV and V-VI,
so DDI is the project's check that triage holds on dark skin. It is small, has no official split, and is
kept whole as a test set. DDI publishes no patient or lesion ids.

``ddi_metadata.csv`` carries both a fine ``disease`` name and DDI's own ``malignant`` flag. The flag is
checked against the triage group that ``label_maps/ddi.yaml`` gives the disease: a disagreement means
the map, the CSV or a column is wrong, so it stops the load, except for the labels in
:data:`FLAG_OVERRIDES`, whose disagreement is a documented decision.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skintriage.data.records import ManifestError
from skintriage.data.sources.files import MetadataError, blank, index_images, parse_codes, read_table
from skintriage.data.sources.registry import Source, register
from skintriage.data.taxonomy import is_malignant, label_map, normalise_label

NAME = "ddi"
METADATA_NAME = "ddi_metadata.csv"
# The released CSV calls the flag `malignant`; an earlier release (still handled by the authors' own
# loader) called it `malignancy(malig=1)`.
FLAG_COLUMNS = ("malignant", "malignancy(malig=1)")
FLAG_VALUES = {"true": True, "1": True, "false": False, "0": False}
SKIN_TONES = {"12": "I-II", "34": "III-IV", "56": "V-VI"}  # DDI reports Fitzpatrick types in pairs
# Labels whose triage group deliberately differs from DDI's `malignant` flag (see label_maps/ddi.yaml).
FLAG_OVERRIDES = frozenset({"actinic-keratosis", "atypical-spindle-cell-nevus-of-reed"})
AIMI_URL = "https://stanfordaimi.azurewebsites.net/datasets/35866158-8196-48d8-87bf-50dca81df965"
MANUAL_STEPS = f"""\
  1. Open {AIMI_URL}
     (Stanford AIMI shared datasets; project page https://ddi-dataset.github.io/), sign in and accept
     the Stanford University research use agreement.
  2. Download the DDI archive and unzip it into one folder: ddi_metadata.csv and the PNG images
     (000001.png ...), which may sit in a sub-folder.
  3. Run: skintriage data summarize ddi --root FOLDER"""


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    path = metadata or root / METADATA_NAME
    table = read_table(path, required=("DDI_file", "skin_tone", "disease"))
    flag_column = next((column for column in FLAG_COLUMNS if column in table.columns), None)
    if flag_column is None:
        raise MetadataError(f"{path}: missing column {FLAG_COLUMNS[0]!r} (DDI's benign/malignant flag)")
    _check_flags(table["disease"], parse_codes(table, flag_column, FLAG_VALUES), table["origin"])
    index = index_images(root)
    files = table["DDI_file"].str.strip()
    stems = files.map(lambda file: Path(file).stem)
    return pd.DataFrame(
        {
            "image_id": "ddi:" + stems,
            "image": [index.get(stem, file) for stem, file in zip(stems, files, strict=True)],
            "raw_label": table["disease"],
            "skin_type": parse_codes(table, "skin_tone", SKIN_TONES),
            "origin": table["origin"],
        }
    )


def _check_flags(diseases: pd.Series, flags: list[object], origins: pd.Series) -> None:
    """Refuse rows whose mapped triage group contradicts DDI's own malignant flag (overrides excepted)."""
    mapping = label_map(NAME)
    problems = []
    for disease, flag, origin in zip(diseases, flags, origins, strict=True):
        if blank(disease):
            continue  # the manifest reports empty labels with their row
        diagnosis = mapping.diagnosis_for(disease, source=NAME, where=origin)
        if is_malignant(diagnosis.group) != flag and normalise_label(disease) not in FLAG_OVERRIDES:
            problems.append(
                f"{origin}: disease {disease!r} maps to {diagnosis.code} ({diagnosis.group}) "
                f"but DDI flags it {'malignant' if flag else 'benign'}"
            )
    if problems:
        raise ManifestError(
            f"source {NAME!r}: {len(problems)} rows where label_maps/{NAME}.yaml and DDI's malignant flag "
            "disagree; fix the map, or list the label in ddi.FLAG_OVERRIDES with the reason",
            problems,
        )


SOURCE = register(
    Source(
        name=NAME,
        title="Diverse Dermatology Images (DDI)",
        description="656 biopsy-proven clinical photos from Stanford clinics, 78 diagnoses, balanced across "
        "Fitzpatrick I-II / III-IV / V-VI; rare malignancies (lymphomas, metastases) included. Test only.",
        licence="Stanford University research use agreement via Stanford AIMI (non-commercial research, "
        "no redistribution)",
        citation="Daneshjou R, Vodrahalli K, Novoa RA, et al. Disparities in dermatology AI performance on a "
        "diverse, curated clinical image set. Sci Adv 8(31), eabq6147 (2022). doi:10.1126/sciadv.abq6147",
        obtain=MANUAL_STEPS,
        label_map=NAME,
        read=read,
        acquisition="clinical",
        split_fractions=(("test", 1.0),),
    )
)
