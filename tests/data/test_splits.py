"""Splits keep patients, lesions and duplicate pictures whole; the audit finds what crosses."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skintriage.data.records import build_manifest
from skintriage.data.sources import get_source
from skintriage.data.splits import (
    assign_splits,
    audit_leakage,
    hash_images,
    leakage_groups,
    naive_image_split,
    split_manifest,
)
from tests.helpers import shared_data, write_image

TRAIN_VAL = (("train", 0.8), ("val", 0.2))


def synthetic(tmp_path, *, n_lesions=60, images_per_lesion=2, with_patients=True):
    """Lesions with several images each; 3 lesions per patient; a rare class of 10 lesions."""
    rows = []
    for lesion in range(n_lesions):
        label = "mel" if lesion % 6 == 0 else "nv"
        for k in range(images_per_lesion):
            name = f"L{lesion}_{k}"
            write_image(tmp_path / f"{name}.png", seed=lesion * 100 + k, size=(24, 24))
            rows.append(
                {
                    "image_id": name,
                    "image": f"{name}.png",
                    "raw_label": label,
                    "lesion_id": f"L{lesion}",
                    "patient_id": f"P{lesion // 3}" if with_patients else None,
                    "origin": f"rows.csv:{len(rows) + 2}",
                }
            )
    return build_manifest(pd.DataFrame(rows), source="unit", root=tmp_path, label_map_name="isic2018")


def crossing(manifest, column):
    return int((manifest.frame.groupby(column)["split"].nunique() > 1).sum())


def test_project_split_keeps_patients_and_lesions_whole_and_is_deterministic(tmp_path):
    manifest = synthetic(tmp_path)
    first = assign_splits(manifest, fractions=TRAIN_VAL, seed=7)
    again = assign_splits(manifest, fractions=TRAIN_VAL, seed=7)
    other = assign_splits(manifest, fractions=TRAIN_VAL, seed=8)
    assert first.frame["split"].tolist() == again.frame["split"].tolist()
    assert first.frame["split"].tolist() != other.frame["split"].tolist()
    assert crossing(first, "lesion_id") == 0 and crossing(first, "patient_id") == 0
    report = audit_leakage(first)
    assert report.leaks == 0


def test_project_split_is_stratified_by_diagnosis(tmp_path):
    manifest = synthetic(tmp_path, n_lesions=120, images_per_lesion=1, with_patients=False)
    split = assign_splits(manifest, fractions=TRAIN_VAL, seed=0).frame
    counts = pd.crosstab(split["diagnosis"], split["split"])
    assert counts.loc["mel", "val"] == 4 and counts.loc["mel", "train"] == 16  # 20 melanomas, 80/20
    assert counts.loc["nv", "val"] == 20 and counts.loc["nv", "train"] == 80


def test_naive_split_leaks_and_the_audit_lists_the_lesions(tmp_path):
    manifest = synthetic(tmp_path, n_lesions=40, images_per_lesion=3, with_patients=False)
    naive = naive_image_split(manifest, fractions=TRAIN_VAL, seed=0)
    report = audit_leakage(naive)
    assert len(report.shared_lesions) == crossing(naive, "lesion_id") > 5
    lesion, splits = next(iter(report.shared_lesions.items()))
    assert set(naive.frame.loc[naive.frame["lesion_id"] == lesion, "split"]) == set(splits)


def test_identical_and_near_identical_pictures_are_grouped_and_audited(tmp_path):
    """DermaMNIST-style leakage: no lesion ids, the same picture in train and test, once re-encoded."""
    rows = []
    for i in range(6):
        write_image(tmp_path / f"u{i}.png", seed=i, size=(64, 64))
        rows.append({"image_id": f"u{i}", "image": f"u{i}.png", "raw_label": "nv", "split": "train"})
    original = Image.open(tmp_path / "u0.png")
    original.save(tmp_path / "copy.png")  # byte-identical after PNG round trip of identical pixels
    buffer = io.BytesIO()
    original.resize((60, 60)).save(buffer, "JPEG", quality=80)
    (tmp_path / "recoded.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "u1_again.png").write_bytes((tmp_path / "u1.png").read_bytes())
    rows += [
        {"image_id": "recoded", "image": "recoded.jpg", "raw_label": "nv", "split": "test"},
        {"image_id": "exact", "image": "u1_again.png", "raw_label": "nv", "split": "test"},
        {"image_id": "other", "image": "copy.png", "raw_label": "nv", "split": "train"},
    ]
    frame = pd.DataFrame(rows)
    frame["origin"] = [f"r{i}" for i in range(len(frame))]
    manifest = build_manifest(frame, source="unit", root=tmp_path, label_map_name="isic2018")
    hashes = hash_images(manifest)
    report = audit_leakage(manifest, hashes)
    assert [(p["image_a"], p["image_b"]) for p in report.identical_images] == [("u1", "exact")]
    assert ("u0", "recoded") in {(p["image_a"], p["image_b"]) for p in report.near_identical_images}
    groups = leakage_groups(manifest, hashes)
    ids = manifest.frame["image_id"].tolist()
    assert groups[ids.index("u0")] == groups[ids.index("recoded")] == groups[ids.index("other")]
    assert groups[ids.index("u2")] != groups[ids.index("u3")]

    unsplit = manifest.with_splits([None] * len(manifest))
    regrouped = assign_splits(unsplit, fractions=TRAIN_VAL, seed=0, hashes=hashes)
    assert audit_leakage(regrouped, hashes).leaks == 0


def test_official_split_is_kept_and_required_when_asked(tmp_path):
    manifest = synthetic(tmp_path, n_lesions=12, images_per_lesion=1, with_patients=False)
    official = manifest.with_splits(["train"] * 6 + ["test"] * 6)
    kept, policy = split_manifest(official, strategy="project", fractions=TRAIN_VAL)
    assert kept.frame["split"].tolist() == official.frame["split"].tolist()
    assert policy["official_split_used"] is True
    with pytest.raises(ValueError, match="no official split"):
        split_manifest(manifest, strategy="official", fractions=TRAIN_VAL)
    with pytest.raises(ValueError, match="unknown split strategy"):
        split_manifest(manifest, strategy="random", fractions=TRAIN_VAL)


def test_bad_fractions_are_refused(tmp_path):
    manifest = synthetic(tmp_path, n_lesions=6, images_per_lesion=1)
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(manifest, fractions=(("train", 0.7), ("val", 0.2)))


def test_audit_requires_every_row_split(tmp_path):
    with pytest.raises(ValueError, match="rows have no split"):
        audit_leakage(synthetic(tmp_path, n_lesions=3, images_per_lesion=1))


def test_full_ham10000_metadata_naive_split_leaks_lesions_project_split_none():
    root = shared_data("ham10000_isic2018_224")
    source = get_source("ham10000")
    manifest = source.load(root, metadata=root / "HAM10000_metadata_full_10015.csv", on_missing="report")
    assert len(manifest) == 10015 and len(manifest.missing_images) == 4031
    naive = audit_leakage(naive_image_split(manifest, fractions=source.split_fractions, seed=0))
    multi_image_lesions = int((manifest.frame["lesion_id"].value_counts() > 1).sum())
    assert 0 < len(naive.shared_lesions) <= multi_image_lesions
    assert all(len(splits) == 2 for splits in naive.shared_lesions.values())
    project = audit_leakage(assign_splits(manifest, fractions=source.split_fractions, seed=0))
    assert len(project.shared_lesions) == 0


@pytest.mark.slow
def test_real_ham10000_split_is_lesion_disjoint_and_stratified():
    root = shared_data("ham10000_isic2018_224")
    source = get_source("ham10000")
    manifest = source.load(root)
    hashes = hash_images(manifest)
    split = assign_splits(manifest, fractions=source.split_fractions, seed=0, hashes=hashes)
    report = audit_leakage(split, hashes)
    assert report.leaks == 0
    shares = split.frame.groupby("diagnosis")["split"].apply(lambda s: (s == "val").mean())
    assert np.all(np.abs(shares - 0.15) < 0.02), shares.to_dict()


def test_dermamnist_style_official_split_leak_is_found_through_image_hashes(tmp_path):
    """MedMNIST arrays carry no lesion ids; a picture in both train and test is still caught."""
    from skintriage.data.sources import dermamnist  # noqa: F401  (registers the source)

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(6, 28, 28, 3), dtype=np.uint8)
    test = rng.integers(0, 256, size=(3, 28, 28, 3), dtype=np.uint8)
    test[0] = train[2]  # the same image in both splits
    test[1] = np.clip(train[4].astype(int) + 3, 0, 255)  # a slightly brightened copy
    labels = {name: rng.integers(0, 7, size=(n, 1)) for name, n in (("train", 6), ("val", 2), ("test", 3))}
    np.savez(
        tmp_path / "dermamnist.npz",
        train_images=train,
        val_images=rng.integers(0, 256, size=(2, 28, 28, 3), dtype=np.uint8),
        test_images=test,
        **{f"{name}_labels": value for name, value in labels.items()},
    )
    manifest = get_source("dermamnist").load(tmp_path)
    official, _ = split_manifest(manifest, strategy="official", fractions=TRAIN_VAL)
    report = audit_leakage(official, hash_images(official))
    assert report.identical_images == [
        {"image_a": "dermamnist:train:2", "split_a": "train", "image_b": "dermamnist:test:0", "split_b": "test"}
    ]
    assert [(p["image_a"], p["image_b"]) for p in report.near_identical_images] == [
        ("dermamnist:train:4", "dermamnist:test:1")
    ]
