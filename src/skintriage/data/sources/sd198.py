"""SD-198 (Sun et al. 2016): clinical photos from the DermQuest atlas, 198 classes; here its lesion classes.

The release is one folder per class (``images/<Class_Name>/<file>.jpg``), optionally with a
``metadata.csv`` (columns ``file``, ``sd198_class``[, ``md5_original``]) as in the shared copy. Labels
are the atlas class, not per-image histology. There are no patient ids: several photos of one patient
can sit in a class, and only byte-identical originals (``md5_original``) and the splitter's image
hashing group them.

Almost every DermQuest photo carries a light caption bar along its bottom edge (the atlas' name and
the image's address); no other source has one, so a model could learn "caption bar means SD-198 means
this case mix". The source registers that artefact (``artefact="caption_bar"``): with
``mask_watermark: true`` the bar is detected and cropped off before any other step.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skintriage.data.sources.files import read_class_table
from skintriage.data.sources.registry import Source, register

MANUAL_STEPS = """\
  SD-198 was released by its authors for research use (Sun et al., ECCV 2016; the DermQuest images are
  no longer online). Obtain a copy from the authors or a research mirror and arrange it as
  ROOT/images/<Class_Name>/<file>.jpg (one folder per class), optionally with ROOT/metadata.csv
  (columns file, sd198_class[, md5_original]). Then run: skintriage data summarize sd198 --root ROOT"""


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    return read_class_table(root, metadata=metadata, label_column="sd198_class", id_prefix="sd198:")


SOURCE = register(
    Source(
        name="sd198",
        title="SD-198 (DermQuest) clinical photographs",
        description="Clinical photos from the DermQuest atlas as collected for SD-198; labels are the atlas class. "
        "The shared copy holds its 10 lesion classes (300 images). Most carry a caption bar along the bottom.",
        licence="Research use as released by the SD-198 authors; images from DermQuest; no licence stated in the "
        "mirror: do not redistribute",
        citation="Sun X, Yang J, Sun M, Wang K. A benchmark for automatic visual classification of clinical skin "
        "disease images. ECCV 2016, LNCS 9910:206-222. doi:10.1007/978-3-319-46466-4_13",
        obtain=MANUAL_STEPS,
        label_map="sd198",
        read=read,
        acquisition="clinical",
        split_fractions=(("train", 0.7), ("val", 0.15), ("test", 0.15)),
        artefact="caption_bar",
    )
)
