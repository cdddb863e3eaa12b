"""DDI loader: the real ddi_metadata.csv layout (leading unnamed index column), labels and flag checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from skintriage.data.records import ManifestError
from skintriage.data.sources import ddi
from skintriage.data.sources.files import MetadataError
from skintriage.data.sources.registry import get_source
from skintriage.data.taxonomy import UnknownLabelError, label_map
from tests.helpers import write_image

HEADER = ",DDI_ID,DDI_file,skin_tone,malignant,disease"
ROWS = (
    "0,1,000001.png,56,TRUE,melanoma-in-situ",
    "1,2,000002.png,34,True,metastatic-carcinoma",
    "2,3,000003.png,56,TRUE,mycosis-fungoides",
    "3,4,000004.png,12,FALSE,melanocytic-nevi",
    "4,5,000005.png,34,FALSE,actinic-keratosis",  # OVERRIDE: DDI benign, taxonomy malignant side
    "5,6,000006.png,56,TRUE,atypical-spindle-cell-nevus-of-reed",  # OVERRIDE: DDI malignant, mapped nv
    "6,7,000007.png,12,FALSE,verruca-vulgaris",
)


def write_ddi(root: Path, rows: tuple[str, ...] = ROWS, header: str = HEADER) -> Path:
    """The AIMI archive: the CSV at the top, the PNGs in a sub-folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ddi_metadata.csv").write_text("\n".join((header, *rows)) + "\n", encoding="utf-8")
    for seed, row in enumerate(rows):
        write_image(root / "images" / row.split(",")[2], seed=seed)
    return root


def test_loads_every_row_with_diagnosis_group_and_skin_type(tmp_path: Path) -> None:
    manifest = get_source("ddi").load(write_ddi(tmp_path))
    frame = manifest.frame.set_index("image_id")

    assert len(manifest) == len(ROWS)
    assert frame.loc["ddi:000001", "image"] == "images/000001.png"
    assert frame.loc["ddi:000001", "diagnosis"] == "mel"
    assert frame.loc["ddi:000002", "diagnosis"] == "metastasis"
    assert frame.loc["ddi:000002", "triage_group"] == "cutaneous_metastasis"
    assert frame.loc["ddi:000003", "triage_group"] == "other_malignant"
    assert frame.loc["ddi:000004", "diagnosis"] == "nv"
    assert frame.loc["ddi:000007", "diagnosis"] == "non_neoplastic"
    assert frame.loc["ddi:000007", "triage_group"] == "benign"
    assert frame["skin_type"].tolist() == ["V-VI", "III-IV", "V-VI", "I-II", "III-IV", "V-VI", "I-II"]
    assert set(frame["acquisition"]) == {"clinical"}
    assert set(frame["source"]) == {"ddi"}
    assert frame.loc["ddi:000005", "origin"] == "ddi_metadata.csv:6"


def test_documented_overrides_load_against_ddis_flag(tmp_path: Path) -> None:
    frame = get_source("ddi").load(write_ddi(tmp_path)).frame.set_index("image_id")

    assert (frame.loc["ddi:000005", "diagnosis"], frame.loc["ddi:000005", "triage_group"]) == (
        "akiec",
        "other_malignant",
    )
    assert (frame.loc["ddi:000006", "diagnosis"], frame.loc["ddi:000006", "triage_group"]) == ("nv", "benign")


def test_flag_that_contradicts_the_map_is_refused_with_the_row(tmp_path: Path) -> None:
    rows = (*ROWS[:3], "3,4,000004.png,12,TRUE,melanocytic-nevi")
    with pytest.raises(ManifestError, match=r"ddi_metadata\.csv:5: disease 'melanocytic-nevi' maps to nv") as error:
        get_source("ddi").load(write_ddi(tmp_path, rows))
    assert "FLAG_OVERRIDES" in str(error.value)


def test_older_flag_column_is_read(tmp_path: Path) -> None:
    rows = ("0,1,000001.png,56,1,melanoma", "1,2,000002.png,12,0,dermatofibroma")
    header = ",DDI_ID,DDI_file,skin_tone,malignancy(malig=1),disease"
    manifest = get_source("ddi").load(write_ddi(tmp_path, rows, header))
    assert manifest.frame["diagnosis"].tolist() == ["mel", "df"]


def test_unknown_disease_raises_naming_label_source_and_row(tmp_path: Path) -> None:
    rows = (*ROWS[:2], "2,3,000003.png,56,TRUE,merkel-cell-carcinoma")
    with pytest.raises(UnknownLabelError, match=r"source 'ddi': label 'merkel-cell-carcinoma' \(ddi_metadata\.csv:4\)"):
        get_source("ddi").load(write_ddi(tmp_path, rows))


def test_empty_disease_is_reported_by_the_manifest(tmp_path: Path) -> None:
    rows = (*ROWS[:2], "2,3,000003.png,56,TRUE,")
    with pytest.raises(ManifestError, match=r"ddi_metadata\.csv:4: the label is empty"):
        get_source("ddi").load(write_ddi(tmp_path, rows))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("0,1,000001.png,56,maybe,melanoma", r"ddi_metadata\.csv:2: malignant 'maybe' is not one of"),
        ("0,1,000001.png,78,TRUE,melanoma", r"ddi_metadata\.csv:2: skin_tone '78' is not one of 12, 34, 56"),
        ("0,1,000001.png,56,TRUE,melanoma,extra", r"ddi_metadata\.csv:2: expected 6 fields, found 7"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        get_source("ddi").load(write_ddi(tmp_path, (row,)))


def test_missing_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"missing column.*'disease'"):
        get_source("ddi").load(write_ddi(tmp_path, ("0,1,000001.png,56,TRUE",), ",DDI_ID,DDI_file,skin_tone,malignant"))
    with pytest.raises(MetadataError, match="missing column 'malignant'"):
        get_source("ddi").load(
            write_ddi(tmp_path, ("0,1,000001.png,56,melanoma",), ",DDI_ID,DDI_file,skin_tone,disease")
        )


def test_missing_image_names_the_row(tmp_path: Path) -> None:
    root = write_ddi(tmp_path)
    (root / "images" / "000003.png").unlink()
    with pytest.raises(ManifestError, match=r"ddi_metadata\.csv:4 \(000003\.png\): file not found"):
        get_source("ddi").load(root)
    assert get_source("ddi").load(root, on_missing="report").missing_images == ["ddi:000003"]


def test_map_lists_all_78_ddi_diseases_and_overrides_are_in_it() -> None:
    mapping = label_map("ddi")
    assert len(mapping.labels) == 78
    assert set(mapping.labels) >= ddi.FLAG_OVERRIDES


def test_no_scripted_download_and_manual_steps_point_at_aimi() -> None:
    source = get_source("ddi")
    assert source.fetch is None
    assert ddi.AIMI_URL in source.obtain
    assert source.split_fractions == (("test", 1.0),)
