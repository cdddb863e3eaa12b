"""MED-NODE (Giotis et al. 2015): 170 clinical (non-dermoscopic) photos, 70 melanomas and 100 naevi.

The release is two folders, ``melanoma/`` and ``naevus/``; the shared copy adds a ``metadata.csv``
(columns ``file``, ``label``[, ``md5_original``]). Labels are binary, from the archive of the Department
of Dermatology, University Medical Center Groningen. No patient or lesion ids, no split, no metadata;
single centre, mostly fair skin, closely cropped photos.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skintriage.data.sources.files import read_class_table
from skintriage.data.sources.registry import Source, register

MANUAL_STEPS = """\
  Download MED-NODE from https://www.cs.rug.nl/~imaging/databases/melanoma_naevi/ (University of Groningen,
  research use, cite Giotis et al. 2015) and unpack it so that ROOT/melanoma/*.jpg and ROOT/naevus/*.jpg
  exist. Then run: skintriage data summarize med_node --root ROOT"""


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    return read_class_table(root, metadata=metadata, label_column="label", id_prefix="med_node:")


SOURCE = register(
    Source(
        name="med_node",
        title="MED-NODE clinical photographs",
        description="170 clinical photos of melanoma (70) and naevi (100) from the University Medical Center "
        "Groningen; binary labels, no metadata.",
        licence="Research use (University of Groningen), cite Giotis et al. 2015; no licence stated: do not "
        "redistribute",
        citation="Giotis I, Molders N, Land S, Biehl M, Jonkman MF, Petkov N. MED-NODE: a computer-assisted "
        "melanoma diagnosis system using non-dermoscopic images. Expert Syst Appl 2015;42:6578-6585. "
        "doi:10.1016/j.eswa.2015.04.034",
        obtain=MANUAL_STEPS,
        label_map="med_node",
        read=read,
        acquisition="clinical",
        split_fractions=(("train", 0.7), ("val", 0.15), ("test", 0.15)),
    )
)
