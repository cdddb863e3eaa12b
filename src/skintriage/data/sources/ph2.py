"""PH2 (Mendonça et al. 2013): 200 dermoscopic images from Portugal: 80 common naevi, 80 atypical naevi, 40 melanomas.

The release unpacks to ``PH2Dataset/`` with ``PH2_dataset.txt`` (also as ``.xlsx``) and one folder per
case: ``PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp``. The text table is read, not the
spreadsheet, so that no Excel reader is needed. Its rows look like::

    ||   Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry | ... ||  Colors ||
    || IMD003 ||                        ||                  0 ||  0 | T | A | A | A | A ||  4 ||

Cells are separated by ``||`` (the dermoscopic criteria share one cell, separated by ``|``); most
histology cells are empty, so cells are counted, never split on whitespace. Labels are the clinical
diagnosis code (0 common naevus, 1 atypical naevus, 2 melanoma). PH2 has no patient ids and no split;
it is small and kept whole as an external test set.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skintriage.data.sources.files import MetadataError, find_metadata
from skintriage.data.sources.registry import Source, register

TABLE_CANDIDATES = ("PH2_dataset.txt", "PH2Dataset/PH2_dataset.txt")
IMAGES_FOLDER = "PH2 Dataset images"
SEPARATOR = "||"
MANUAL_STEPS = """\
  1. Open https://www.fc.up.pt/addi/ph2%20database.html (Universidade do Porto, ADDI project), accept the
     terms (free for research and education, cite the paper) and download PH2Dataset.rar.
  2. Unpack it into FOLDER, giving FOLDER/PH2Dataset/PH2_dataset.txt and FOLDER/PH2Dataset/PH2 Dataset images/.
  3. Run: skintriage data summarize ph2 --root FOLDER"""


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    path = metadata or find_metadata(root, TABLE_CANDIDATES)
    table = read_pipe_table(path, required=("Name", "Clinical Diagnosis"))
    images = _images_folder(path, root)
    names = table["Name"]
    return pd.DataFrame(
        {
            "image_id": names,
            "image": names.map(lambda name: (images / name / f"{name}_Dermoscopic_Image" / f"{name}.bmp").as_posix()),
            "raw_label": table["Clinical Diagnosis"],
            "origin": table["origin"],
        }
    )


def _images_folder(table: Path, root: Path) -> Path:
    """The case folders sit next to the table in the official layout; a table kept outside the root
    (``metadata=``) leaves them directly under the root."""
    folder, top = table.parent.resolve(), root.resolve()
    return (folder.relative_to(top) if folder.is_relative_to(top) else Path()) / IMAGES_FOLDER


def read_pipe_table(path: Path, *, required: tuple[str, ...]) -> pd.DataFrame:
    """Parse a ``||``-separated text table into strings, with ``origin`` = ``file:line`` like ``read_table``.

    Lines that do not start with ``||`` (blank lines, the legend after the table) are not rows.
    """
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file not found")
    # The file is ASCII in practice; undecodable bytes could only sit in free-text cells this loader ignores.
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    header: list[str] | None = None
    rows, origins = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip().startswith(SEPARATOR):
            continue
        cells = _cells(line)
        if header is None:
            header = cells
            missing = [column for column in required if column not in header]
            if missing:
                raise MetadataError(
                    f"{path}:{number}: missing column(s) {', '.join(map(repr, missing))}; "
                    f"found {', '.join(map(repr, header))}"
                )
        elif len(cells) != len(header):
            raise MetadataError(
                f"{path}:{number}: expected {len(header)} '{SEPARATOR}'-separated cells, found {len(cells)}"
            )
        else:
            rows.append(cells)
            origins.append(f"{path.name}:{number}")
    if not rows:
        raise MetadataError(f"{path}: no table rows found (lines starting with '{SEPARATOR}')")
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame["origin"] = origins
    return frame


def _cells(line: str) -> list[str]:
    body = line.strip().removeprefix(SEPARATOR).removesuffix(SEPARATOR)
    return [cell.strip() for cell in body.split(SEPARATOR)]


SOURCE = register(
    Source(
        name="ph2",
        title="PH2",
        description="200 dermoscopic images (Tuebinger Mole Analyzer, Hospital Pedro Hispano, Portugal): 80 common "
        "naevi, 80 atypical naevi, 40 melanomas, with lesion masks and dermoscopic criteria. Test set only.",
        licence="Free for research and education with citation of the paper; no redistribution",
        citation="Mendonça T, Ferreira PM, Marques JS, Marçal ARS, Rozeira J. PH² - A dermoscopic image database "
        "for research and benchmarking. 35th Annual International Conference of the IEEE EMBS (2013), "
        "5437-5440. doi:10.1109/EMBC.2013.6610779",
        obtain=MANUAL_STEPS,
        label_map="ph2",
        read=read,
        acquisition="dermoscopic",
        split_fractions=(("test", 1.0),),
    )
)
