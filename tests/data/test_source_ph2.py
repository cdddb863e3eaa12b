"""PH2 loader: the '||'-separated PH2_dataset.txt and the official per-case BMP folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from skintriage.data.records import ManifestError
from skintriage.data.sources import ph2
from skintriage.data.sources.files import MetadataError
from skintriage.data.sources.registry import get_source
from skintriage.data.taxonomy import UnknownLabelError
from tests.helpers import write_image

HEADER = (
    "||   Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network | Dots/Globules | "
    "Streaks | Regression Areas | Blue-Whitish Veil ||           Colors ||"
)
# Name, histology (mostly empty), clinical code; the criteria cell is the same for every row.
CASES = (
    ("IMD002", "", "1"),
    ("IMD003", "", "0"),
    ("IMD009", "", "0"),
    ("IMD016", "", "1"),
    ("IMD058", "Melanoma", "2"),
)
LEGEND = ("", " Legends:", "   Clinical Diagnosis: 0 - Common Nevus; 1 - Atypical Nevus; 2 - Melanoma.")


def case_row(name: str, histology: str, code: str) -> str:
    return (
        f"|| {name} || {histology:>22} || {code:>18} ||         0 |               T |             A |       A |"
        "                A |                 A ||             3  4 ||"
    )


def write_ph2(root: Path, rows: tuple[str, ...] | None = None, header: str = HEADER) -> Path:
    """The unpacked release, FOLDER/PH2Dataset/...; returns FOLDER."""
    dataset = root / "PH2Dataset"
    dataset.mkdir(parents=True, exist_ok=True)
    rows = tuple(case_row(*case) for case in CASES) if rows is None else rows
    (dataset / "PH2_dataset.txt").write_text("\n".join((header, *rows, *LEGEND)) + "\n", encoding="utf-8")
    for seed, (name, _, _) in enumerate(CASES):
        case = dataset / "PH2 Dataset images" / name
        write_image(case / f"{name}_Dermoscopic_Image" / f"{name}.bmp", seed=seed)
        write_image(case / f"{name}_lesion" / f"{name}_lesion.bmp", seed=100 + seed, mode="L")
    return root


def test_loads_cases_with_clinical_diagnosis(tmp_path: Path) -> None:
    manifest = get_source("ph2").load(write_ph2(tmp_path))
    frame = manifest.frame.set_index("image_id")

    assert len(manifest) == 5
    assert frame["raw_label"].tolist() == ["1", "0", "0", "1", "2"]
    assert frame["diagnosis"].value_counts().to_dict() == {"nv": 4, "mel": 1}
    assert frame.loc["IMD058", "triage_group"] == "other_malignant"
    assert frame.loc["IMD002", "triage_group"] == "benign"
    assert frame.loc["IMD002", "image"] == "PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp"
    assert frame.loc["IMD002", "origin"] == "PH2_dataset.txt:2"
    assert set(frame["acquisition"]) == {"dermoscopic"}


def test_root_may_be_the_dataset_folder_itself(tmp_path: Path) -> None:
    manifest = get_source("ph2").load(write_ph2(tmp_path) / "PH2Dataset")
    assert manifest.frame["image"][0] == "PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp"


def test_table_outside_root_leaves_images_under_root(tmp_path: Path) -> None:
    table = tmp_path / "elsewhere" / "PH2_dataset.txt"
    table.parent.mkdir()
    (write_ph2(tmp_path / "data") / "PH2Dataset" / "PH2_dataset.txt").rename(table)
    manifest = get_source("ph2").load(tmp_path / "data" / "PH2Dataset", metadata=table)
    assert len(manifest) == 5


def test_unknown_code_raises_naming_label_source_and_row(tmp_path: Path) -> None:
    rows = (case_row("IMD002", "", "1"), case_row("IMD003", "", "3"))
    with pytest.raises(UnknownLabelError, match=r"source 'ph2': label '3' \(PH2_dataset\.txt:3\)"):
        get_source("ph2").load(write_ph2(tmp_path, rows))


def test_row_with_a_missing_cell_names_the_line(tmp_path: Path) -> None:
    rows = (case_row("IMD002", "", "1"), "|| IMD003 ||  0 || 0 | T | A | A | A | A || 4 ||")
    with pytest.raises(MetadataError, match=r"PH2_dataset\.txt:3: expected 5 '\|\|'-separated cells, found 4"):
        get_source("ph2").load(write_ph2(tmp_path, rows))


def test_missing_column_and_empty_table_are_named(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"PH2_dataset\.txt:1: missing column\(s\) 'Clinical Diagnosis'"):
        get_source("ph2").load(write_ph2(tmp_path, header=HEADER.replace("Clinical Diagnosis", "Diagnosis")))
    with pytest.raises(MetadataError, match="no table rows found"):
        get_source("ph2").load(write_ph2(tmp_path, rows=(), header="PH2 database"))


def test_missing_table_lists_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"PH2_dataset\.txt, PH2Dataset/PH2_dataset\.txt"):
        get_source("ph2").load(tmp_path)


def test_empty_label_and_missing_image_name_the_row(tmp_path: Path) -> None:
    root = write_ph2(tmp_path, (case_row("IMD002", "", "1"), case_row("IMD003", "", "")))
    with pytest.raises(ManifestError, match=r"PH2_dataset\.txt:3: the label is empty"):
        get_source("ph2").load(root)
    root = write_ph2(tmp_path)
    (root / "PH2Dataset" / "PH2 Dataset images" / "IMD009" / "IMD009_Dermoscopic_Image" / "IMD009.bmp").unlink()
    with pytest.raises(ManifestError, match=r"PH2_dataset\.txt:4 \(.*IMD009\.bmp\): file not found"):
        get_source("ph2").load(root)


def test_manual_download_only() -> None:
    source = get_source("ph2")
    assert source.fetch is None
    assert "fc.up.pt/addi" in source.obtain
    assert source.split_fractions == (("test", 1.0),)
    assert ph2.IMAGES_FOLDER in source.obtain
