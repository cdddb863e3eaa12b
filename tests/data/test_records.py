"""The manifest's validation: every bad row is reported with the file and row that caused it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skintriage.data.records import MANIFEST_COLUMNS, Manifest, ManifestError, build_manifest
from skintriage.data.taxonomy import UnknownLabelError
from tests.helpers import write_image


def raw_rows(tmp_path, n=3, **overrides):
    for i in range(n):
        write_image(tmp_path / "images" / f"img{i}.jpg", seed=i)
    rows = {
        "image_id": [f"img{i}" for i in range(n)],
        "image": [f"images/img{i}.jpg" for i in range(n)],
        "raw_label": ["mel", "nv", "bcc"][:n],
        "lesion_id": [f"L{i}" for i in range(n)],
        "age": ["55", "", "70"][:n],
        "sex": ["male", None, "female"][:n],
        "origin": [f"meta.csv:{i + 2}" for i in range(n)],
    }
    rows.update(overrides)
    return pd.DataFrame(rows)


def build(raw, tmp_path, **options):
    return build_manifest(raw, source="unit", root=tmp_path, label_map_name="isic2018", **options)


def test_valid_rows_make_a_typed_manifest(tmp_path):
    manifest = build(raw_rows(tmp_path), tmp_path, acquisition="dermoscopic")
    frame = manifest.frame
    assert tuple(frame.columns) == MANIFEST_COLUMNS
    assert frame["diagnosis"].tolist() == ["mel", "nv", "bcc"]
    assert frame["triage_group"].tolist() == ["other_malignant", "benign", "other_malignant"]
    assert frame["acquisition"].unique().tolist() == ["dermoscopic"]
    assert frame["age"].iloc[0] == 55.0 and np.isnan(frame["age"].iloc[1])
    assert manifest.read_image("images/img0.jpg").size == (32, 24)


def test_missing_required_column_is_named(tmp_path):
    with pytest.raises(ManifestError, match="column 'raw_label' is required"):
        build(raw_rows(tmp_path).drop(columns="raw_label"), tmp_path)


def test_missing_image_names_row_and_file(tmp_path):
    raw = raw_rows(tmp_path)
    (tmp_path / "images" / "img1.jpg").unlink()
    with pytest.raises(ManifestError, match=r"meta.csv:3 \(images/img1.jpg\): file not found"):
        build(raw, tmp_path)


def test_missing_images_can_be_reported_instead(tmp_path):
    raw = raw_rows(tmp_path)
    (tmp_path / "images" / "img1.jpg").unlink()
    manifest = build(raw, tmp_path, on_missing="report")
    assert manifest.missing_images == ["img1"]
    assert len(manifest) == 3 and len(manifest.with_images()) == 2


def test_unreadable_and_empty_images_are_named(tmp_path):
    raw = raw_rows(tmp_path)
    (tmp_path / "images" / "img0.jpg").write_text("not really a jpeg")
    (tmp_path / "images" / "img2.jpg").write_bytes(b"")
    with pytest.raises(ManifestError) as caught:
        build(raw, tmp_path)
    message = str(caught.value)
    assert "meta.csv:2 (images/img0.jpg): not a recognised image file" in message
    assert "meta.csv:4 (images/img2.jpg): file is empty" in message


def test_duplicate_image_ids_name_both_rows(tmp_path):
    raw = raw_rows(tmp_path, image_id=["a", "b", "a"])
    with pytest.raises(ManifestError, match=r"image_id 'a' appears in meta.csv:2, meta.csv:4"):
        build(raw, tmp_path)


@pytest.mark.parametrize("path", ["../outside.jpg", "images/../../outside.jpg", "/etc/passwd", "C:\\secret.jpg"])
def test_paths_escaping_the_root_are_refused(tmp_path, path):
    raw = raw_rows(tmp_path, image=["images/img0.jpg", path, "images/img2.jpg"])
    with pytest.raises(ManifestError, match=r"meta.csv:3: image path"):
        build(raw, tmp_path)


def test_unknown_label_raises_with_source_and_row(tmp_path):
    with pytest.raises(UnknownLabelError, match=r"source 'unit': label 'mole' \(meta.csv:3\)"):
        build(raw_rows(tmp_path, raw_label=["mel", "mole", "nv"]), tmp_path)


def test_empty_label_and_bad_values_are_all_listed(tmp_path):
    raw = raw_rows(tmp_path, raw_label=["mel", "", "nv"], age=["55", "old", "200"], sex=["male", "x", "female"])
    raw["split"] = ["train", "holdout", None]
    with pytest.raises(ManifestError) as caught:
        build(raw, tmp_path)
    problems = caught.value.problems
    assert "meta.csv:3: the label is empty" in problems
    assert "meta.csv:3: age 'old' is not a number between 0 and 120" in problems
    assert "meta.csv:4: age '200' is not a number between 0 and 120" in problems
    assert any(p.startswith("meta.csv:3: split 'holdout'") for p in problems)
    assert any(p.startswith("meta.csv:3: sex 'x'") for p in problems)


def test_array_images_are_checked_and_read(tmp_path):
    np.savez(tmp_path / "small.npz", train_images=np.zeros((2, 8, 8, 3), np.uint8), train_labels=np.zeros((2, 1)))
    raw = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "image": ["small.npz#train_images/1", "small.npz#train_images/5"],
            "raw_label": ["nv", "nv"],
            "origin": ["small.npz[1]", "small.npz[5]"],
        }
    )
    with pytest.raises(ManifestError, match=r"index 5 out of range for array 'train_images' \(2 images\)"):
        build(raw, tmp_path)
    manifest = build(raw.iloc[:1], tmp_path)
    assert manifest.read_image("small.npz#train_images/1").size == (8, 8)


def test_concat_rebases_paths_and_rejects_duplicate_ids(tmp_path):
    a = build(raw_rows(tmp_path / "a"), tmp_path / "a")
    b = build(raw_rows(tmp_path / "b", image_id=["x", "y", "z"]), tmp_path / "b")
    combined = Manifest.concat([a, b], root=tmp_path)
    assert combined.frame["image"].iloc[3] == "b/images/img0.jpg"
    assert combined.read_image("b/images/img0.jpg").size == (32, 24)
    with pytest.raises(ManifestError, match="duplicate image ids"):
        Manifest.concat([a, a], root=tmp_path)


def hand_built(tmp_path, missing=()):
    """Six rows, no images read: where() only looks at the split and diagnosis columns."""
    frame = pd.DataFrame(
        {
            "image_id": ["t1", "t2", "t3", "v1", "v2", "x1"],
            "diagnosis": ["mel", "nv", "bkl", "mel", "bkl", "nv"],
            "split": ["train", "train", "train", "val", "val", "test"],
        },
        index=[10, 11, 12, 13, 14, 15],  # not 0..n-1: the subset must be renumbered
    )
    return Manifest(frame, tmp_path, list(missing))


def test_where_selects_a_split_and_renumbers_the_rows(tmp_path):
    val = hand_built(tmp_path).where(split="val")
    assert isinstance(val, Manifest) and val.root == tmp_path
    assert val.frame["image_id"].tolist() == ["v1", "v2"]
    assert val.frame.index.tolist() == [0, 1]


def test_where_selects_diagnoses_and_both_filters_combine(tmp_path):
    manifest = hand_built(tmp_path)
    assert manifest.where(diagnoses=["mel", "nv"]).frame["image_id"].tolist() == ["t1", "t2", "v1", "x1"]
    assert manifest.where(split="train", diagnoses={"mel", "bkl"}).frame["image_id"].tolist() == ["t1", "t3"]
    assert len(manifest.where(split="val", diagnoses=["nv"])) == 0
    assert manifest.where().frame["image_id"].tolist() == manifest.frame["image_id"].tolist()


def test_where_keeps_the_missing_images_of_the_rows_it_keeps(tmp_path):
    val = hand_built(tmp_path, missing=["t2", "v2"]).where(split="val")
    assert val.missing_images == ["v2"]
    assert val.with_images().frame["image_id"].tolist() == ["v1"]


def test_where_refuses_an_unknown_split_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown split 'validation'"):
        hand_built(tmp_path).where(split="validation")
