"""A user's own images, labelled with the project's diagnosis codes or names (``label_maps/canonical.yaml``).

Two layouts: one folder per class (``ROOT/mel/*.jpg``, ``ROOT/Merkel cell carcinoma/*.jpg``; sub-folders
inside a class folder are fine), or a CSV manifest passed as ``metadata`` with columns ``image`` (path
relative to ROOT) and ``label``, and optionally ``image_id``, ``lesion_id``, ``patient_id``, ``age``,
``sex``, ``body_site``, ``skin_type``, ``acquisition`` and ``split``. Only the manifest can carry lesion
and patient ids; without them the splitter cannot keep a patient's images together, which is a
reason to prefer it. Paths in a manifest are checked by the shared manifest validation, which refuses
any that leave ROOT.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skintriage.data.images import PHOTO_SUFFIXES
from skintriage.data.records import RAW_OPTIONAL
from skintriage.data.sources.files import MetadataError, blank, read_table
from skintriage.data.sources.registry import Source, register

OPTIONAL_COLUMNS = ("image_id", *RAW_OPTIONAL)
# Coded columns are matched case-insensitively; any other value is refused by the manifest, naming the row.
LOWERCASE_COLUMNS = ("sex", "acquisition", "split")
ID_PREFIX = "folder:"
MANUAL_STEPS = """\
  Put each image in a folder named after its diagnosis (a code such as mel, bcc, mcc, metastasis, nv,
  non_neoplastic, or its name such as "Merkel cell carcinoma"), e.g. ROOT/mcc/patient7_1.jpg, or write
  a CSV with columns image,label[,patient_id,lesion_id,...] and pass it with --metadata. Then run:
  skintriage data summarize folder --root ROOT"""


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    return _read_manifest(metadata) if metadata else _read_class_folders(root)


def _read_manifest(path: Path) -> pd.DataFrame:
    table = read_table(path, required=("image", "label"))
    images = table["image"].str.strip()
    frame = pd.DataFrame({"image": images, "raw_label": table["label"], "origin": table["origin"]})
    for column in OPTIONAL_COLUMNS:
        if column in table.columns:
            values = table[column].map(lambda value: None if blank(value) else value.strip())
            frame[column] = values.str.lower() if column in LOWERCASE_COLUMNS else values
    given = frame["image_id"] if "image_id" in frame else pd.Series(None, index=frame.index, dtype=object)
    frame["image_id"] = given.where(given.notna(), ID_PREFIX + images)
    return frame


def _read_class_folders(root: Path) -> pd.DataFrame:
    """Each top-level folder's name is the label of every image beneath it; hidden folders are skipped."""
    # HEIC photos are listed too (PHOTO_SUFFIXES), so that validation says to convert them
    relatives = (path.relative_to(root) for path in root.rglob("*") if path.suffix.lower() in PHOTO_SUFFIXES)
    images = sorted(
        relative.as_posix()
        for relative in relatives
        if (root / relative).is_file() and not any(part.startswith(".") for part in relative.parts)
    )
    unfiled = [image for image in images if "/" not in image]
    if unfiled:
        raise MetadataError(
            f"{root}: {len(unfiled)} images are not in a class folder ({', '.join(unfiled[:5])}); "
            f"move each into a folder named after its diagnosis, or pass a CSV manifest.\n{MANUAL_STEPS}"
        )
    if not images:
        raise MetadataError(f"{root}: no images found in class folders.\n{MANUAL_STEPS}")
    return pd.DataFrame(
        {
            "image_id": [ID_PREFIX + image for image in images],
            "image": images,
            "raw_label": [image.split("/", 1)[0] for image in images],
            "origin": images,
        }
    )


SOURCE = register(
    Source(
        name="folder",
        title="Your own images",
        description="A user's own labelled images, one folder per diagnosis or a CSV manifest; labels are the "
        "project's canonical diagnosis codes or names.",
        licence="Set by whoever owns the images; the user is responsible for consent and permission to use them",
        citation="",
        obtain=MANUAL_STEPS,
        label_map="canonical",
        read=read,
    )
)
