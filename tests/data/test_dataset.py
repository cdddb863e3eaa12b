"""ManifestDataset: items, labels, class checks and imbalance weights on a small generated manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from skintriage.data.dataset import ManifestDataset
from skintriage.data.presets import ClassificationPresetEval
from skintriage.data.records import build_manifest
from tests.helpers import write_image

LABELS = ["mel", "nv", "nv", "nv", "bcc", "bcc"]
CLASSES = ["mel", "nv", "bcc"]


def make_manifest(tmp_path, labels=LABELS, **options):
    for i in range(len(labels)):
        write_image(tmp_path / "images" / f"img{i}.png", size=(40 + 7 * i, 30 + 3 * i), seed=i)
    raw = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(len(labels))],
            "image": [f"images/img{i}.png" for i in range(len(labels))],
            "raw_label": labels,
            "origin": [f"meta.csv:{i + 2}" for i in range(len(labels))],
        }
    )
    return build_manifest(raw, source="unit", root=tmp_path, label_map_name="isic2018", **options)


def test_items_are_transformed_images_labels_and_rows(tmp_path):
    manifest = make_manifest(tmp_path)
    dataset = ManifestDataset(manifest, transform=ClassificationPresetEval(input_size=32), class_names=CLASSES)
    assert len(dataset) == 6 and dataset.num_classes == 3
    assert dataset.labels.tolist() == [0, 1, 1, 1, 2, 2]
    image, label, row = dataset[4]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert (label, row) == (2, 4)
    assert manifest.frame.loc[row, "diagnosis"] == CLASSES[label]
    assert dataset[-1][2] == 5
    with pytest.raises(IndexError):
        dataset[6]


def test_without_a_transform_items_are_uint8_chw_pixels(tmp_path):
    manifest = make_manifest(tmp_path)
    image, _, _ = ManifestDataset(manifest, transform=None, class_names=CLASSES)[1]
    expected = np.asarray(manifest.read_image("images/img1.png"))
    assert image.dtype == torch.uint8 and image.shape == (3, 33, 47)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)


def test_a_dataloader_batches_items(tmp_path):
    dataset = ManifestDataset(
        make_manifest(tmp_path), transform=ClassificationPresetEval(input_size=32), class_names=CLASSES
    )
    images, labels, rows = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 32, 32)
    assert labels.tolist() == [0, 1, 1, 1] and rows.tolist() == [0, 1, 2, 3]


def test_a_diagnosis_outside_class_names_is_named_with_its_count(tmp_path):
    manifest = make_manifest(tmp_path)
    with pytest.raises(ValueError, match=r"2 of 6 manifest rows .* 'bcc' \(2 rows\)"):
        ManifestDataset(manifest, transform=None, class_names=["mel", "nv"])


def test_class_names_must_be_unique_known_diagnoses(tmp_path):
    manifest = make_manifest(tmp_path)
    with pytest.raises(ValueError, match="'nv' more than once"):
        ManifestDataset(manifest, transform=None, class_names=["mel", "nv", "nv", "bcc"])
    with pytest.raises(ValueError, match=r"\['melanoma'\] are not canonical diagnoses"):
        ManifestDataset(manifest, transform=None, class_names=["melanoma", "nv", "bcc"])


def test_missing_images_must_be_dropped_first(tmp_path):
    manifest = make_manifest(tmp_path)
    (tmp_path / "images" / "img0.png").unlink()
    raw = manifest.frame[["image_id", "image", "raw_label", "origin"]]
    reported = build_manifest(raw, source="unit", root=tmp_path, label_map_name="isic2018", on_missing="report")
    with pytest.raises(ValueError, match=r"1 rows whose image is missing.*with_images\(\)"):
        ManifestDataset(reported, transform=None, class_names=CLASSES)
    assert len(ManifestDataset(reported.with_images(), transform=None, class_names=CLASSES)) == 5


def test_class_weights_are_balanced_inverse_frequency(tmp_path):
    dataset = ManifestDataset(make_manifest(tmp_path), transform=None, class_names=[*CLASSES, "df"])
    assert dataset.class_counts().tolist() == [1, 3, 2, 0]
    weights = dataset.class_weights()
    # scikit-learn's "balanced": N / (K * n_c) over the K = 3 classes present; absent classes get 0.
    assert torch.allclose(weights, torch.tensor([2.0, 2 / 3, 1.0, 0.0]))
    per_image = weights[torch.from_numpy(dataset.labels)]
    assert per_image.mean().item() == pytest.approx(1.0)  # the loss keeps its scale
    milder = dataset.class_weights(power=0.5)
    assert milder[0] / milder[1] == pytest.approx(3**0.5)


def test_sample_weights_balance_the_classes(tmp_path):
    dataset = ManifestDataset(make_manifest(tmp_path), transform=None, class_names=CLASSES)
    weights = dataset.sample_weights()
    assert weights.dtype == torch.float64
    assert weights.tolist() == pytest.approx([1, 1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2])
    per_class = [weights[torch.from_numpy(dataset.labels == c)].sum().item() for c in range(3)]
    assert per_class == pytest.approx([1.0, 1.0, 1.0])
    sampler = WeightedRandomSampler(weights, num_samples=3000, generator=torch.Generator().manual_seed(0))
    drawn = np.bincount(dataset.labels[list(sampler)], minlength=3) / 3000
    assert np.allclose(drawn, 1 / 3, atol=0.05)
    assert torch.equal(dataset.sample_weights(power=0.0), torch.ones(6, dtype=torch.float64))
