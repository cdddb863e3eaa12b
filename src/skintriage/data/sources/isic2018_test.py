"""ISIC 2018 Task 3 test set: 1,512 dermoscopic images with the challenge's ground truth.

The official ground truth is a one-hot CSV (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``). Every row is the
official ``test`` split. The challenge scores 1,511 of the images: ISIC_0035068 carries weight 0 in
the official scorer, and ``score_weight`` records that so our metrics can match the leaderboard's.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skintriage.data.sources.files import MetadataError, find_metadata, index_images, read_table
from skintriage.data.sources.registry import Source, register

GROUND_TRUTH_CANDIDATES = (
    "ISIC2018_Task3_Test_GroundTruth.csv",
    "ISIC2018_Task3_Test_GroundTruth.tab",
)
CLASS_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
UNSCORED_IMAGES = frozenset({"ISIC_0035068"})
MANUAL_STEPS = """\
  1. Download ISIC2018_Task3_Test_Input.zip and ISIC2018_Task3_Test_GroundTruth.zip from the ISIC
     challenge archive (https://challenge.isic-archive.com/data/#2018), or the test files from the
     HAM10000 Harvard Dataverse record (https://doi.org/10.7910/DVN/DBW86T).
  2. Unzip both into one folder (the CSV beside the image folder) and run:
     skintriage data summarize isic2018_test --root FOLDER"""


def one_hot_label(row: pd.Series) -> str:
    """The one class whose column is 1; anything else in a ground-truth row is an error naming the row."""
    try:
        values = {column: float(row[column]) for column in CLASS_COLUMNS}
    except ValueError:
        raise MetadataError(
            f"{row['origin']}: class columns must be numbers, found {row[list(CLASS_COLUMNS)].tolist()}"
        ) from None
    positives = [column for column, value in values.items() if value == 1.0]
    if len(positives) != 1 or any(value not in (0.0, 1.0) for value in values.values()):
        raise MetadataError(f"{row['origin']}: expected exactly one class set to 1 in {CLASS_COLUMNS}, found {values}")
    return positives[0].lower()


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    path = metadata or find_metadata(root, GROUND_TRUTH_CANDIDATES)
    table = read_table(path, required=("image", *CLASS_COLUMNS))
    index = index_images(root)
    return pd.DataFrame(
        {
            "image_id": table["image"],
            "image": table["image"].map(lambda image_id: index.get(image_id, f"{image_id}.jpg")),
            "raw_label": table.apply(one_hot_label, axis=1) if len(table) else [],
            "split": "test",
            "score_weight": [0.0 if image_id in UNSCORED_IMAGES else 1.0 for image_id in table["image"]],
            "origin": table["origin"],
        }
    )


SOURCE = register(
    Source(
        name="isic2018_test",
        title="ISIC 2018 Task 3 test set",
        description="The official held-out test set of the ISIC 2018 lesion diagnosis challenge: 1,512 dermoscopic "
        "images, 7 diagnoses as in HAM10000 (1,511 scored). No lesion or patient ids are published.",
        licence="CC BY-NC 4.0 (ISIC challenge data; non-commercial research, attribution)",
        citation="Codella N et al. Skin lesion analysis toward melanoma detection 2018. arXiv:1902.03368; "
        "Tschandl P et al. Sci Data 5, 180161 (2018)",
        obtain=MANUAL_STEPS,
        label_map="isic2018",
        read=read,
        acquisition="dermoscopic",
        split_fractions=(("test", 1.0),),
    )
)
