"""Fitzpatrick17k (Groh et al. 2021): 16,577 clinical atlas photos, 114 conditions, Fitzpatrick skin types.

Most of the 114 conditions are inflammatory or genetic rather than tumours; they are kept (as
``non_neoplastic``) because a triage model has to see rashes to learn not to refer them. Labels come
from the atlas page an image was filed under, not per-image histology. There are no patient, lesion
or split columns; the project splits it and its image hashing groups the atlases' near-duplicates.

The dataset ships only ``fitzpatrick17k.csv`` with each image's source URL; images are stored as
``<md5hash>.jpg`` (anywhere under the root). Many atlas links have rotted since 2021, so a real copy is
usually incomplete: the manifest lists the missing images (``on_missing="report"``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skintriage.data.sources.files import download, index_images, parse_codes, read_table
from skintriage.data.sources.registry import FetchError, Source, register

CSV_NAME = "fitzpatrick17k.csv"
CSV_URL = "https://raw.githubusercontent.com/mattgroh/fitzpatrick17k/main/fitzpatrick17k.csv"
IMAGE_FOLDER = "images"
SKIN_TYPES = {"-1": None, "1": "I", "2": "II", "3": "III", "4": "IV", "5": "V", "6": "VI"}  # -1: not rated
# Offline, every image download fails; give up after this many failures in a row with no success
# rather than trying all 16,577 links.
GIVE_UP_AFTER = 20
MANUAL_STEPS = f"""\
  1. Download {CSV_NAME} from https://github.com/mattgroh/fitzpatrick17k into FOLDER.
  2. Download each image from its `url` column and save it as FOLDER/{IMAGE_FOLDER}/<md5hash>.jpg
     (or ask the authors for the image archive through the form linked from that README).
  3. Run: skintriage data summarize fitzpatrick17k --root FOLDER
  Images are CC BY-NC-SA 3.0 (DermaAmin, Atlas Dermatologico); dead links stay missing."""


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    table = read_table(metadata or root / CSV_NAME, required=("md5hash", "fitzpatrick_scale", "label"))
    index = index_images(root)
    hashes = table["md5hash"].str.strip()
    return pd.DataFrame(
        {
            "image_id": hashes,
            "image": hashes.map(lambda md5: index.get(md5, f"{IMAGE_FOLDER}/{md5}.jpg")),
            "raw_label": table["label"],
            "skin_type": parse_codes(table, "fitzpatrick_scale", SKIN_TYPES),
            "origin": table["origin"],
        }
    )


def fetch(destination: Path) -> None:
    """Download the CSV, then every image not yet present (so a broken-off fetch resumes where it stopped).

    Dead atlas links do not stop the fetch; they are listed in the FetchError raised at the end. A run
    whose first downloads all fail is taken to be offline and stops early.
    """
    table_path = destination / CSV_NAME
    if not table_path.is_file():
        download(CSV_URL, table_path, manual_steps=MANUAL_STEPS)
    table = read_table(table_path, required=("md5hash", "url"))
    failed: list[str] = []
    succeeded = False
    for md5, url, origin in zip(table["md5hash"].str.strip(), table["url"], table["origin"], strict=True):
        target = destination / IMAGE_FOLDER / f"{md5}.jpg"
        if target.is_file():
            continue
        try:
            download(url, target, manual_steps=MANUAL_STEPS)
            succeeded = True
        except FetchError:
            failed.append(f"{origin}: {url}")
            if not succeeded and len(failed) >= GIVE_UP_AFTER:
                raise FetchError(
                    f"the first {len(failed)} image downloads all failed (offline?), e.g. {failed[0]}.\n"
                    f"To obtain the images by hand:\n{MANUAL_STEPS}"
                ) from None
    if failed:
        shown = "\n  ".join(failed[:10])
        raise FetchError(
            f"{len(failed)} of {len(table)} images could not be downloaded (dead links are common):\n  {shown}\n"
            f"The manifest reports them as missing; to look for them by hand:\n{MANUAL_STEPS}"
        )


SOURCE = register(
    Source(
        name="fitzpatrick17k",
        title="Fitzpatrick17k",
        description="16,577 clinical photos from two online atlases, 114 conditions (mostly inflammatory), each "
        "rated for Fitzpatrick skin type I-VI; labels are the atlas topic. Images come from their URLs.",
        licence="CC BY-NC-SA 3.0 (images from DermaAmin and Atlas Dermatologico; non-commercial, share-alike)",
        citation="Groh M, Harris C, Soenksen L, et al. Evaluating deep neural networks trained on clinical "
        "images in dermatology with the Fitzpatrick 17k dataset. CVPR Workshops (ISIC) 2021, 1820-1828. "
        "arXiv:2104.09957",
        obtain=MANUAL_STEPS,
        label_map="fitzpatrick17k",
        read=read,
        acquisition="clinical",
        split_fractions=(("train", 0.7), ("val", 0.15), ("test", 0.15)),
        fetch=fetch,
    )
)
