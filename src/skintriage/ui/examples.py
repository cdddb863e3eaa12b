"""The demo's example gallery: labelled clinical and dermoscopic test images, read where the data is present.

The project ships no images. ``data/demo_examples.csv`` (written by ``python data/make_demo_examples.py``
from the bundled model's held-out test splits) names a few test images by their path under the data root,
with the diagnosis and how each was photographed; the demo shows those that exist on this machine, labelled,
so a user can try a clinical photo as well as a dermoscopic one. Test images only: none of them was used to
train, calibrate or choose anything.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from skintriage.common.errors import SkintriageError
from skintriage.common.paths import CHECKOUT_ROOT
from skintriage.data.taxonomy import DIAGNOSES
from skintriage.triage.acquisition import NAMES

COLUMNS = ("image", "diagnosis", "acquisition", "source", "label")
# The checkout's list, not package data: it names images under the data root, which no installed package carries.
DEFAULT_LIST = CHECKOUT_ROOT / "data" / "demo_examples.csv"


class ExampleListError(SkintriageError, ValueError):
    """The example list is malformed: names the file, row and field."""


@dataclass(frozen=True)
class DemoExample:
    path: Path
    diagnosis: str  # canonical diagnosis code
    acquisition: str  # "dermoscopic" or "clinical"
    source: str  # the dataset it comes from
    label: str  # the dataset's own diagnosis (e.g. "Marjolin ulcer"), or the canonical name

    @property
    def caption(self) -> str:
        """What the gallery shows for the image: photo type and diagnosis (the gallery's title names the sets)."""
        kind = NAMES[self.acquisition].capitalize()
        group = DIAGNOSES[self.diagnosis].name
        shown = self.label if group.lower() in self.label.lower() else f"{self.label} ({group.lower()})"
        return f"{kind}: {shown}"


def read_examples(path: Path, data_root: Path) -> list[DemoExample]:
    """The listed examples whose image exists under ``data_root`` (none when the data is absent)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ExampleListError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
        examples = []
        for number, row in enumerate(reader, start=2):  # row 1 is the header
            if row["diagnosis"] not in DIAGNOSES:
                raise ExampleListError(f"{path}, row {number}: unknown diagnosis {row['diagnosis']!r}")
            if row["acquisition"] not in NAMES:
                raise ExampleListError(f"{path}, row {number}: unknown acquisition {row['acquisition']!r}")
            image = data_root / row["image"]
            if image.is_file():
                examples.append(DemoExample(image, row["diagnosis"], row["acquisition"], row["source"], row["label"]))
    return examples


def write_examples(path: Path, examples: list[DemoExample], data_root: Path) -> None:
    """Write ``examples`` with image paths relative to ``data_root`` (the list must not depend on one machine)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for example in examples:
            writer.writerow(
                {
                    "image": example.path.relative_to(data_root).as_posix(),
                    "diagnosis": example.diagnosis,
                    "acquisition": example.acquisition,
                    "source": example.source,
                    "label": example.label,
                }
            )
