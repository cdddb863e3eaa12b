"""ISIC Archive loader, on exports written in isic-cli's layout (metadata.csv + <isic_id>.jpg)."""

from __future__ import annotations

import csv
import os
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest

from skintriage.data.records import ManifestError
from skintriage.data.sources import isic_archive
from skintriage.data.sources.files import MetadataError
from skintriage.data.sources.registry import FetchError, get_source
from skintriage.data.taxonomy import UnknownLabelError, label_map
from tests.helpers import write_image

# isic-cli writes isic_id, attribution, copyright_license, then the union of the images' acquisition and
# clinical fields in sorted order (isic_cli.cli.utils._extract_metadata).
FIELDS = sorted(
    [
        "age_approx", "anatom_site_1", "anatom_site_2", "anatom_site_special", "clin_size_long_diam_mm",
        "concomitant_biopsy", "dermoscopic_type", "diagnosis_1", "diagnosis_2", "diagnosis_3", "diagnosis_4",
        "diagnosis_5", "diagnosis_confirm_type", "fitzpatrick_skin_type", "image_manipulation", "image_type",
        "lesion_id", "melanocytic", "patient_id", "pixels_x", "pixels_y", "sex", "tbp_tile_type",
    ]
)  # fmt: skip
HEADER = ["isic_id", "attribution", "copyright_license", *FIELDS]

MCC = "Malignant:Merkel cell proliferation:Merkel cell carcinoma"
METASTASIS = "Malignant:Skin metastasis of internal solid cancer - non-hematological"
ROWS = [
    # isic_id, diagnosis path, image_type, patient_id, lesion_id, age, sex
    ("ISIC_0000001", MCC, "clinical: close-up", "IP_0000001", "IL_0000001", "80", "male"),
    ("ISIC_0000002", METASTASIS, "dermoscopic", "IP_0000002", "IL_0000002", "65", "female"),
    (
        "ISIC_0000003",
        "Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma in situ:"
        "Melanoma in situ, Lentigo maligna type",
        "dermoscopic", "IP_0000003", "IL_0000003", "70", "female",
    ),
    (
        "ISIC_0000004",
        "Benign:Benign melanocytic proliferations:Nevus:Nevus, Atypical, Dysplastic, or Clark:Nevus, Clark",
        "dermoscopic", "IP_0000001", "IL_0000004", "80", "male",
    ),
    (
        "ISIC_0000005",
        "Malignant:Malignant epidermal proliferations:Squamous cell carcinoma in situ:"
        "Squamous cell carcinoma in situ, Bowens disease",
        "clinical: overview", "IP_0000004", "IL_0000005", "75", "male",
    ),
    (
        "ISIC_0000006",
        "Malignant:Malignant epidermal proliferations:Squamous cell carcinoma, Invasive",
        "dermoscopic", "IP_0000004", "IL_0000006", "75", "male",
    ),
    ("ISIC_0000007", "Benign", "TBP tile: close-up", "IP_0000005", "IL_0000007", "45", ""),
    (
        "ISIC_0000008",
        "Indeterminate:Indeterminate epidermal proliferations:Solar or actinic keratosis",
        "dermoscopic", "IP_0000006", "IL_0000008", "", "female",
    ),
    (
        "ISIC_0000009",
        "Benign:Benign epidermal proliferations:Lichen planus like keratosis",
        "", "", "", "55", "female",
    ),
]  # fmt: skip
EXPECTED = {
    "ISIC_0000001": "mcc",
    "ISIC_0000002": "metastasis",
    "ISIC_0000003": "mel",
    "ISIC_0000004": "nv",
    "ISIC_0000005": "akiec",
    "ISIC_0000006": "scc",
    "ISIC_0000007": "other_benign",
    "ISIC_0000008": "akiec",
    "ISIC_0000009": "bkl",
}


def record(isic_id: str, path: str, image_type: str, patient: str, lesion: str, age: str, sex: str) -> dict:
    levels = path.split(":") + [""] * (5 - len(path.split(":")))
    return {
        "isic_id": isic_id,
        "attribution": "Department of Dermatology, Example University",
        "copyright_license": "CC-BY-NC",
        "age_approx": age,
        "anatom_site_1": "Head and neck",
        "diagnosis_confirm_type": "histopathology",
        "fitzpatrick_skin_type": "II",
        "image_type": image_type,
        "lesion_id": lesion,
        "patient_id": patient,
        "sex": sex,
        **{f"diagnosis_{level}": term for level, term in enumerate(levels, start=1)},
    }


def write_export(folder: Path, rows=ROWS, *, header=HEADER, images: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = [record(*row) for row in rows]
    with (folder / "metadata.csv").open("w", newline="", encoding="utf8") as out:
        writer = csv.DictWriter(out, header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    if images:
        for seed, entry in enumerate(records):
            write_image(folder / f"{entry['isic_id']}.jpg", size=(16, 12), seed=seed)
    return folder / "metadata.csv"


def test_loads_an_isic_cli_export_with_mcc_and_metastasis(tmp_path):
    write_export(tmp_path)

    manifest = get_source("isic_archive").load(tmp_path)

    frame = manifest.frame.set_index("image_id")
    assert len(frame) == len(ROWS)
    assert frame["diagnosis"].to_dict() == EXPECTED
    assert frame.loc["ISIC_0000001", "triage_group"] == "mcc"
    assert frame.loc["ISIC_0000002", "triage_group"] == "cutaneous_metastasis"
    assert frame.loc["ISIC_0000001", "raw_label"] == "Merkel cell carcinoma"
    assert frame.loc["ISIC_0000002", "raw_label"] == "Skin metastasis of internal solid cancer - non-hematological"
    assert frame.loc["ISIC_0000007", "raw_label"] == "Benign"
    # official ids: ISIC_0000001 and ISIC_0000004 are two lesions of one patient
    assert frame.loc["ISIC_0000004", "patient_id"] == "IP_0000001"
    assert frame.loc["ISIC_0000004", "lesion_id"] == "IL_0000004"
    assert pd.isna(frame.loc["ISIC_0000009", "patient_id"])
    assert frame.loc["ISIC_0000001", "image"] == "ISIC_0000001.jpg"
    assert frame.loc["ISIC_0000001", "origin"] == "metadata.csv:2"
    assert frame.loc["ISIC_0000001", "age"] == 80
    assert frame.loc["ISIC_0000002", "sex"] == "female"
    assert pd.isna(frame.loc["ISIC_0000007", "sex"])
    assert frame.loc["ISIC_0000001", "skin_type"] == "II"
    assert frame.loc["ISIC_0000001", "body_site"] == "Head and neck"
    assert frame["split"].isna().all()  # no official split
    assert frame["acquisition"].to_dict() == {
        "ISIC_0000001": "clinical",
        "ISIC_0000002": "dermoscopic",
        "ISIC_0000003": "dermoscopic",
        "ISIC_0000004": "dermoscopic",
        "ISIC_0000005": "clinical",
        "ISIC_0000006": "dermoscopic",
        "ISIC_0000007": "clinical",  # TBP tile
        "ISIC_0000008": "dermoscopic",
        "ISIC_0000009": None,
    }
    assert manifest.read_image("ISIC_0000001.jpg").size == (16, 12)


def test_every_export_below_the_root_is_read_one_folder_per_query(tmp_path):
    write_export(tmp_path / "merkel_cell_carcinoma", ROWS[:1])
    write_export(tmp_path / "skin_metastasis", ROWS[1:2])

    frame = get_source("isic_archive").load(tmp_path).frame.set_index("image_id")

    assert frame["diagnosis"].to_dict() == {"ISIC_0000001": "mcc", "ISIC_0000002": "metastasis"}
    assert frame.loc["ISIC_0000001", "image"] == "merkel_cell_carcinoma/ISIC_0000001.jpg"
    assert frame.loc["ISIC_0000002", "origin"] == "skin_metastasis/metadata.csv:2"
    (tmp_path / "skin_metastasis" / "ISIC_0000002.jpg").unlink()
    with pytest.raises(ManifestError, match=r"skin_metastasis/metadata.csv:2 \(skin_metastasis/ISIC_0000002.jpg\)"):
        get_source("isic_archive").load(tmp_path)


def test_metadata_argument_reads_only_that_export(tmp_path):
    write_export(tmp_path / "a", ROWS[:2])
    chosen = write_export(tmp_path / "b", ROWS[2:5])

    manifest = get_source("isic_archive").load(tmp_path, metadata=chosen)

    assert sorted(manifest.frame["image_id"]) == ["ISIC_0000003", "ISIC_0000004", "ISIC_0000005"]


def test_legacy_flat_diagnosis_export(tmp_path):
    header = ["isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general",
              "benign_malignant", "diagnosis", "diagnosis_confirm_type", "image_type", "lesion_id",
              "patient_id", "sex"]  # fmt: skip
    rows = [
        ["ISIC_0024306", "ViDIR", "CC-BY-NC", "45", "lower extremity", "benign", "nevus", "", "dermoscopic",
         "IL_0000010", "", "male"],
        ["ISIC_0024307", "ViDIR", "CC-BY-NC", "80", "head/neck", "malignant", "merkel cell carcinoma",
         "histopathology", "clinical", "", "", "female"],
        ["ISIC_0024308", "ViDIR", "CC-BY-NC", "60", "", "malignant", "other", "histopathology", "dermoscopic",
         "", "", ""],
        ["ISIC_0024309", "ViDIR", "CC-BY-NC", "35", "posterior torso", "benign", "", "", "dermoscopic",
         "", "", ""],
        ["ISIC_0024310", "ViDIR", "CC-BY-NC", "50", "", "indeterminate", "AIMP", "histopathology", "dermoscopic",
         "", "", ""],
    ]  # fmt: skip
    with (tmp_path / "metadata.csv").open("w", newline="") as out:
        csv.writer(out).writerows([header, *rows])

    frame = get_source("isic_archive").load(tmp_path, check_images=False).frame.set_index("image_id")

    assert frame["diagnosis"].to_dict() == {
        "ISIC_0024306": "nv",
        "ISIC_0024307": "mcc",
        "ISIC_0024308": "other_malignant",
        "ISIC_0024309": "other_benign",
        "ISIC_0024310": "mel",
    }
    assert frame.loc["ISIC_0024308", "raw_label"] == "other (malignant)"
    assert frame.loc["ISIC_0024309", "raw_label"] == "benign"
    assert frame.loc["ISIC_0024307", "acquisition"] == "clinical"
    assert frame.loc["ISIC_0024306", "body_site"] == "lower extremity"


def test_legacy_other_without_benign_malignant_is_an_unknown_label(tmp_path):
    with (tmp_path / "metadata.csv").open("w", newline="") as out:
        csv.writer(out).writerows([["isic_id", "benign_malignant", "diagnosis"], ["ISIC_0000001", "", "other"]])

    with pytest.raises(UnknownLabelError, match=r"label 'other' \(metadata.csv:2\)"):
        get_source("isic_archive").load(tmp_path, check_images=False)


def test_unknown_diagnosis_names_the_label_the_source_and_the_row(tmp_path):
    rows = [ROWS[0], ("ISIC_0000099", "Benign:Benign - Other:Chondroid syringoma", "dermoscopic", "", "", "", "")]
    write_export(tmp_path, rows)

    with pytest.raises(UnknownLabelError) as error:
        get_source("isic_archive").load(tmp_path)

    message = str(error.value)
    assert "source 'isic_archive'" in message
    assert "'Chondroid syringoma'" in message
    assert "metadata.csv:3" in message
    assert "isic_archive.yaml" in message


def test_row_without_any_diagnosis_is_reported_with_its_line(tmp_path):
    write_export(tmp_path, [ROWS[0], ("ISIC_0000010", "", "dermoscopic", "", "", "", "")])

    with pytest.raises(ManifestError, match=r"metadata.csv:3: the label is empty"):
        get_source("isic_archive").load(tmp_path)


def test_malformed_csv_names_file_and_line(tmp_path):
    path = write_export(tmp_path, ROWS[:3])
    lines = path.read_text().splitlines()
    lines[2] += ",an extra field"
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(MetadataError, match=rf"{path}:3: expected {len(HEADER)} fields, found {len(HEADER) + 1}"):
        get_source("isic_archive").load(tmp_path)


def test_missing_isic_id_column_is_named(tmp_path):
    write_export(tmp_path, ROWS[:1], header=[c for c in HEADER if c != "isic_id"])

    with pytest.raises(MetadataError, match=r"missing column\(s\) 'isic_id'"):
        get_source("isic_archive").load(tmp_path)


def test_export_without_any_diagnosis_column_is_refused(tmp_path):
    write_export(tmp_path, ROWS[:1], header=["isic_id", "attribution", "copyright_license", "image_type"])

    with pytest.raises(MetadataError, match=r"no diagnosis column; expected diagnosis_1 \.\.\. diagnosis_5") as error:
        get_source("isic_archive").load(tmp_path)
    assert str(error.value).endswith("found 'isic_id', 'attribution', 'copyright_license', 'image_type'")


def test_missing_image_names_the_row_and_the_file(tmp_path):
    write_export(tmp_path, ROWS[:3])
    (tmp_path / "ISIC_0000002.jpg").unlink()

    with pytest.raises(ManifestError, match=r"metadata.csv:3 \(ISIC_0000002.jpg\): file not found"):
        get_source("isic_archive").load(tmp_path)
    reported = get_source("isic_archive").load(tmp_path, on_missing="report")
    assert reported.missing_images == ["ISIC_0000002"]
    assert len(reported.with_images()) == 2


def test_images_are_found_whatever_their_extension(tmp_path):
    write_export(tmp_path, ROWS[:1], images=False)
    write_image(tmp_path / "ISIC_0000001.PNG")

    manifest = get_source("isic_archive").load(tmp_path)

    assert list(manifest.frame["image"]) == ["ISIC_0000001.PNG"]


def test_confocal_microscopy_rows_are_refused_with_their_line(tmp_path):
    write_export(tmp_path, [ROWS[0], ("ISIC_0000011", MCC, "RCM: mosaic", "", "", "", "")])

    with pytest.raises(
        MetadataError,
        match=r"metadata.csv:3: image_type 'RCM: mosaic' is part of a reflectance confocal microscopy case",
    ):
        get_source("isic_archive").load(tmp_path)


def test_unknown_image_type_is_refused(tmp_path):
    write_export(tmp_path, [("ISIC_0000012", MCC, "ultrasound", "", "", "", "")])

    with pytest.raises(MetadataError, match=r"metadata.csv:2: image_type 'ultrasound' is not a known ISIC image type"):
        get_source("isic_archive").load(tmp_path)


def test_root_without_an_export_says_how_to_download_one(tmp_path):
    with pytest.raises(MetadataError, match=r"no metadata.csv found") as error:
        get_source("isic_archive").load(tmp_path)
    assert "pip install isic-cli" in str(error.value)


def test_label_map_decisions():
    mapping = label_map("isic_archive")

    def code(label: str) -> str:
        return mapping.diagnosis_for(label, source="test").code

    assert code("Merkel cell carcinoma") == "mcc"
    assert code("merkel cell carcinoma") == "mcc"  # legacy spelling
    assert code("Skin metastasis of internal solid cancer - non-hematological") == "metastasis"
    assert code("Melanoma metastasis") == "mel"
    assert code("Squamous cell carcinoma in situ") == "akiec"
    assert code("Squamous cell carcinoma, Invasive, Keratoacanthoma-type") == "scc"
    assert code("Atypical Spitz tumor") == "mel"
    assert code("Lichen planus like keratosis") == "bkl"
    assert code("Hemangioma, Cherry") == "vasc"
    assert code("Dermatofibroma, Hemosiderotic") == "df"
    assert code("Verruca") == "non_neoplastic"
    assert (code("Benign"), code("Malignant"), code("Indeterminate")) == (
        "other_benign",
        "other_malignant",
        "other_malignant",
    )
    for ambiguous in ("other", "adnexal tumor"):
        with pytest.raises(UnknownLabelError):
            code(ambiguous)


def fake_isic(folder: Path, script: str) -> Path:
    """An executable named ``isic`` (a Python script), so fetch runs a real subprocess."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "isic"
    path.write_text(f"#!{sys.executable}\n{script}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_fetch_without_isic_cli_raises_with_the_manual_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    with pytest.raises(FetchError) as error:
        get_source("isic_archive").fetch(tmp_path / "dest")

    message = str(error.value)
    assert "pip install isic-cli" in message
    assert """--search 'diagnosis_3:"Merkel cell carcinoma"'""" in message
    assert 'diagnosis_2:"Skin metastasis of internal solid cancer - non-hematological"' in message


def test_fetch_reports_a_failing_download(tmp_path, monkeypatch):
    bin_folder = tmp_path / "bin"
    fake_isic(bin_folder, "import sys\nsys.exit(3)\n")
    monkeypatch.setenv("PATH", str(bin_folder))

    with pytest.raises(FetchError, match=r"failed with exit status 3") as error:
        get_source("isic_archive").fetch(tmp_path / "dest")
    assert "To obtain the images by hand" in str(error.value)


def test_fetch_downloads_each_query_into_its_folder_and_the_result_loads(tmp_path, monkeypatch):
    bin_folder = tmp_path / "bin"
    calls = tmp_path / "calls.txt"
    fake_isic(
        bin_folder,
        f"""
import csv, sys
from pathlib import Path
from PIL import Image
args = sys.argv[1:]
with open({str(calls)!r}, "a") as log:
    log.write(repr(args) + "\\n")
out = Path(args[-1])
out.mkdir(parents=True)
query = args[args.index("--search") + 1]
isic_id, levels = (
    ("ISIC_0000001", ["Malignant", "Merkel cell proliferation", "Merkel cell carcinoma"])
    if "Merkel" in query
    else ("ISIC_0000002", ["Malignant", "Skin metastasis of internal solid cancer - non-hematological", ""])
)
with (out / "metadata.csv").open("w", newline="") as f:
    csv.writer(f).writerows([["isic_id", "diagnosis_1", "diagnosis_2", "diagnosis_3", "image_type"],
                             [isic_id, *levels, "dermoscopic"]])
Image.new("RGB", (8, 8)).save(out / f"{{isic_id}}.jpg")
""",
    )
    monkeypatch.setenv("PATH", str(bin_folder) + os.pathsep + os.environ.get("PATH", ""))
    destination = tmp_path / "dest"

    get_source("isic_archive").fetch(destination)

    logged = calls.read_text().splitlines()
    assert logged == [
        repr(["image", "download", "--search", query, str(destination / folder)])
        for folder, query in isic_archive.FETCH_QUERIES
    ]
    frame = get_source("isic_archive").load(destination).frame
    assert sorted(frame["diagnosis"]) == ["mcc", "metastasis"]
