"""The `folder` source (a user's own images) and the invariants every label map must keep."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from skintriage.data.records import ManifestError
from skintriage.data.sources import folder  # noqa: F401  (registers the source)
from skintriage.data.sources.files import MetadataError
from skintriage.data.sources.registry import get_source
from skintriage.data.taxonomy import DIAGNOSES, UnknownLabelError, label_map, label_map_names, normalise_label
from tests.helpers import write_image

CLASS_IMAGES = (
    "mel/a.jpg",
    "mcc/b.png",
    "Merkel cell carcinoma/c.jpg",
    "metastasis/patient 7/d.jpg",
    "Naevus/e.jpeg",
    "non_neoplastic/f.jpg",
)


def write_classes(root: Path, images: tuple[str, ...] = CLASS_IMAGES) -> Path:
    for seed, image in enumerate(images):
        write_image(root / image, seed=seed)
    return root


def write_manifest(root: Path, lines: tuple[str, ...]) -> Path:
    path = root / "manifest.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_class_folders_give_labels_and_triage_groups(tmp_path: Path) -> None:
    root = write_classes(tmp_path)
    write_image(root / ".thumbnails" / "x.jpg")  # hidden folder: not a class
    (root / "mel" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("a note at the top is fine")
    frame = get_source("folder").load(root).frame.set_index("image")

    assert sorted(frame.index) == sorted(CLASS_IMAGES)
    assert frame.loc["mcc/b.png", "triage_group"] == "mcc"
    assert frame.loc["Merkel cell carcinoma/c.jpg", "diagnosis"] == "mcc"
    assert frame.loc["metastasis/patient 7/d.jpg", "triage_group"] == "cutaneous_metastasis"
    assert frame.loc["Naevus/e.jpeg", "diagnosis"] == "nv"
    assert frame.loc["non_neoplastic/f.jpg", "triage_group"] == "benign"
    assert frame.loc["mel/a.jpg", "image_id"] == "folder:mel/a.jpg"
    assert frame["acquisition"].isna().all()


def test_unknown_folder_name_raises_naming_it(tmp_path: Path) -> None:
    root = write_classes(tmp_path, ("mel/a.jpg", "benign/b.jpg"))
    with pytest.raises(UnknownLabelError, match=r"source 'folder': label 'benign' \(benign/b\.jpg\)"):
        get_source("folder").load(root)


def test_images_outside_class_folders_are_refused(tmp_path: Path) -> None:
    root = write_classes(tmp_path, ("mel/a.jpg", "loose.jpg"))
    with pytest.raises(MetadataError, match=r"1 images are not in a class folder \(loose\.jpg\)"):
        get_source("folder").load(root)


def test_root_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mel").mkdir()
    with pytest.raises(MetadataError, match="no images found in class folders"):
        get_source("folder").load(tmp_path)


def test_csv_manifest_with_metadata(tmp_path: Path) -> None:
    write_classes(tmp_path, ("imgs/1.jpg", "imgs/2.jpg", "imgs/3.jpg"))
    manifest_csv = write_manifest(
        tmp_path,
        (
            "image,label,image_id,patient_id,lesion_id,age,sex,acquisition,split,skin_type,body_site",
            "imgs/1.jpg,mcc,case-1,p1,l1,81,Male,Clinical,TEST,II,face",
            "imgs/2.jpg,Cutaneous metastasis,,p1,l2,81,male,dermoscopic,train,II,scalp",
            "imgs/3.jpg,bkl,,p2,,,,,,,",
        ),
    )
    frame = get_source("folder").load(tmp_path, metadata=manifest_csv).frame

    assert frame["image_id"].tolist() == ["case-1", "folder:imgs/2.jpg", "folder:imgs/3.jpg"]
    assert frame["diagnosis"].tolist() == ["mcc", "metastasis", "bkl"]
    assert frame["triage_group"].tolist() == ["mcc", "cutaneous_metastasis", "benign"]
    assert frame["sex"][:2].tolist() == ["male", "male"]
    assert frame["acquisition"][:2].tolist() == ["clinical", "dermoscopic"]
    assert frame["split"][:2].tolist() == ["test", "train"]
    assert frame["patient_id"].tolist() == ["p1", "p1", "p2"]
    assert frame["age"][0] == 81
    assert frame["origin"][2] == "manifest.csv:4"
    assert frame.iloc[2][["lesion_id", "sex", "acquisition", "split"]].isna().all()


@pytest.mark.parametrize("escaping", ["../../etc/passwd", "/etc/passwd"])
def test_csv_paths_that_leave_the_root_are_refused_with_the_row(tmp_path: Path, escaping: str) -> None:
    write_classes(tmp_path, ("imgs/1.jpg",))
    manifest_csv = write_manifest(tmp_path, ("image,label", "imgs/1.jpg,mel", f"{escaping},mel"))
    with pytest.raises(ManifestError, match=rf"manifest\.csv:3: image path '{escaping}' (escapes|must be relative)"):
        get_source("folder").load(tmp_path, metadata=manifest_csv)


def test_csv_errors_name_file_and_row(tmp_path: Path) -> None:
    write_classes(tmp_path, ("imgs/1.jpg",))
    with pytest.raises(MetadataError, match=r"missing column.*'label'"):
        get_source("folder").load(tmp_path, metadata=write_manifest(tmp_path, ("image,diagnosis", "imgs/1.jpg,mel")))
    with pytest.raises(ManifestError, match=r"manifest\.csv:2: sex 'm' is not one of"):
        get_source("folder").load(tmp_path, metadata=write_manifest(tmp_path, ("image,label,sex", "imgs/1.jpg,mel,M")))
    with pytest.raises(UnknownLabelError, match=r"label 'melanoma in situ' \(manifest\.csv:2\)"):
        get_source("folder").load(
            tmp_path, metadata=write_manifest(tmp_path, ("image,label", "imgs/1.jpg,melanoma in situ"))
        )
    with pytest.raises(ManifestError, match=r"manifest\.csv:2 \(imgs/9\.jpg\): file not found"):
        get_source("folder").load(tmp_path, metadata=write_manifest(tmp_path, ("image,label", "imgs/9.jpg,mel")))


def test_every_label_map_loads_and_maps_only_to_canonical_codes() -> None:
    names = label_map_names()
    assert {"canonical", "ddi", "fitzpatrick17k", "ph2"} <= set(names)
    for name in names:
        text = (resources.files("skintriage.data") / "label_maps" / f"{name}.yaml").read_text(encoding="utf-8")
        codes = set(yaml.safe_load(text)["labels"].values())
        assert codes <= set(DIAGNOSES), f"{name}.yaml maps to unknown codes {codes - set(DIAGNOSES)}"
        assert label_map(name).labels, f"{name}.yaml lists no labels"


def test_canonical_map_knows_every_code_and_name() -> None:
    labels = label_map("canonical").labels
    for code, diagnosis in DIAGNOSES.items():
        assert labels[normalise_label(code)] == code
        assert labels[normalise_label(diagnosis.name)] == code
