"""DermNet-style clinical photographs: one folder per topic, with an optional ``metadata.csv``.

Labels are the DermNet NZ topic an image was filed under (not per-image histology), mapped topic by
topic in ``label_maps/dermnet.yaml``. DermNet publishes no patient or lesion ids; byte-identical
originals filed under two topics share ``md5_original``, which becomes their lesion id so that the
copies can never land in different splits. Other near-identical photos are grouped by the splitter's
image hashing.

The DermNet watermark sits in the bottom-left corner of every image: a shortcut a model can learn if
DermNet photos are mixed with watermark-free datasets; the source registers it (``artefact``), and
``mask_watermark: true`` in a training config fills the corner.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skintriage.data.sources.files import read_class_table
from skintriage.data.sources.registry import Source, register

MANUAL_STEPS = """\
  DermNet NZ images (https://dermnetnz.org/image-library) may be used for non-commercial research with
  attribution (CC BY-NC-ND 3.0 NZ). Collect the topic pages you need into ROOT/images/<topic>/<file>.jpg,
  optionally with ROOT/metadata.csv (columns file, dermnet_class[, md5_original, malignancy_group]),
  for example from the community collection github.com/MinhKemm/DermNet_Dataset, then run:
  skintriage data summarize dermnet --root ROOT"""


def _topic_from_folder(folder: str) -> str:
    return folder.replace("_", " ").capitalize()


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    return read_class_table(
        root, metadata=metadata, label_column="dermnet_class", id_prefix="dermnet:", folder_label=_topic_from_folder
    )


SOURCE = register(
    Source(
        name="dermnet",
        title="DermNet NZ clinical photographs",
        description="Clinical (non-dermoscopic) photos of benign and malignant skin lesions from DermNet NZ topic "
        "pages; labels are the topic, 84 topics in the staged collection. Every image carries a watermark.",
        licence="DermNet NZ image library: non-commercial research with attribution (CC BY-NC-ND 3.0 NZ)",
        citation="DermNet NZ, https://dermnetnz.org; collection github.com/MinhKemm/DermNet_Dataset @ 2df7ed1",
        obtain=MANUAL_STEPS,
        label_map="dermnet",
        read=read,
        acquisition="clinical",
        split_fractions=(("train", 0.7), ("val", 0.15), ("test", 0.15)),
        artefact="corner_watermark",
    )
)
