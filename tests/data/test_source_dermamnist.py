"""DermaMNIST loader, on real .npz files written in MedMNIST's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skintriage.data.sources import dermamnist
from skintriage.data.sources.files import MetadataError
from skintriage.data.sources.registry import FetchError, get_source

COUNTS = {"train": 7, "val": 2, "test": 3}


def write_npz(path: Path, *, size: int = 28, counts: dict[str, int] = COUNTS, seed: int = 0, **override) -> Path:
    """A DermaMNIST file as medmnist ships it: N x H x W x 3 uint8 images, N x 1 uint8 labels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in counts.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 7).astype(np.uint8)[:, None]
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def test_loads_every_split_with_the_official_split_and_ham_labels(tmp_path):
    write_npz(tmp_path / "dermamnist.npz")

    manifest = get_source("dermamnist").load(tmp_path)

    frame = manifest.frame
    assert len(manifest) == sum(COUNTS.values())
    assert frame["split"].value_counts().to_dict() == COUNTS
    train = frame[frame["split"] == "train"]
    # labels 0..6 in MedMNIST's order are akiec, bcc, bkl, df, mel, nv, vasc
    assert list(train["diagnosis"]) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert list(train["triage_group"][:2]) == ["other_malignant", "other_malignant"]
    assert set(frame["acquisition"]) == {"dermoscopic"}
    assert frame["lesion_id"].isna().all()
    row = frame[frame["image_id"] == "dermamnist:val:1"].iloc[0]
    assert row["image"] == "dermamnist.npz#val_images/1"
    assert row["origin"] == "dermamnist.npz val_labels[1]"
    assert row["diagnosis"] == "bcc"


def test_images_decode_to_the_stored_pixels(tmp_path):
    path = write_npz(tmp_path / "dermamnist_64.npz", size=64)
    stored = np.load(path)["test_images"][2]

    manifest = get_source("dermamnist").load(tmp_path)

    image = manifest.read_image("dermamnist_64.npz#test_images/2")
    assert image.size == (64, 64)
    assert np.array_equal(np.asarray(image), stored)


def test_default_is_the_highest_resolution_file_and_metadata_picks_another(tmp_path):
    write_npz(tmp_path / "dermamnist.npz", size=28, counts={"train": 1, "val": 1, "test": 1})
    write_npz(tmp_path / "dermamnist_64.npz", size=64)
    (tmp_path / "pathmnist_224.npz").write_bytes(b"not dermamnist, ignored")

    default = get_source("dermamnist").load(tmp_path)
    chosen = get_source("dermamnist").load(tmp_path, metadata="dermamnist.npz")

    assert len(default) == sum(COUNTS.values())
    assert default.frame["image"].str.startswith("dermamnist_64.npz#").all()
    assert default.frame["image_id"].iloc[0] == "dermamnist_64:train:0"
    assert len(chosen) == 3
    assert chosen.frame["image"].str.startswith("dermamnist.npz#").all()


def test_no_npz_in_root_names_the_expected_files_and_how_to_obtain_them(tmp_path):
    with pytest.raises(MetadataError, match=r"no dermamnist\*\.npz found") as error:
        get_source("dermamnist").load(tmp_path)
    assert "zenodo.org/records/10519652" in str(error.value)


def test_out_of_range_label_names_file_key_index_and_value(tmp_path):
    labels = np.array([[0], [7]], dtype=np.uint8)
    write_npz(tmp_path / "dermamnist.npz", val_labels=labels)

    with pytest.raises(MetadataError) as error:
        get_source("dermamnist").load(tmp_path)

    message = str(error.value)
    assert "dermamnist.npz" in message
    assert "val_labels[1] = 7" in message
    assert "outside 0..6" in message


def test_missing_array_names_the_key(tmp_path):
    write_npz(tmp_path / "dermamnist.npz", test_labels=None)

    with pytest.raises(MetadataError, match=r"dermamnist\.npz: array 'test_labels' missing"):
        get_source("dermamnist").load(tmp_path)


def test_label_count_differing_from_image_count_is_an_error(tmp_path):
    write_npz(tmp_path / "dermamnist.npz", train_labels=np.zeros((6, 1), dtype=np.uint8))

    with pytest.raises(MetadataError, match=r"train_labels has 6 labels but the images array has 7 images"):
        get_source("dermamnist").load(tmp_path)


def test_images_that_are_not_an_image_stack_are_an_error(tmp_path):
    write_npz(tmp_path / "dermamnist.npz", val_images=np.zeros((2, 784), dtype=np.uint8))

    with pytest.raises(MetadataError, match=r"val_images has shape \(2, 784\)"):
        get_source("dermamnist").load(tmp_path)


def test_float_labels_are_an_error(tmp_path):
    write_npz(tmp_path / "dermamnist.npz", test_labels=np.zeros((3, 1), dtype=np.float32))

    with pytest.raises(MetadataError, match=r"test_labels has shape \(3, 1\) and dtype float32"):
        get_source("dermamnist").load(tmp_path)


def test_a_corrupt_npz_is_named(tmp_path):
    (tmp_path / "dermamnist.npz").write_bytes(b"PK\x03\x04 truncated")

    with pytest.raises(MetadataError, match=r"dermamnist\.npz: not a readable \.npz file"):
        get_source("dermamnist").load(tmp_path)


def test_metadata_outside_the_root_is_refused(tmp_path):
    outside = write_npz(tmp_path / "elsewhere" / "dermamnist.npz")
    root = tmp_path / "root"
    root.mkdir()

    with pytest.raises(MetadataError, match=r"must be inside the dataset root"):
        get_source("dermamnist").load(root, metadata=outside)


def test_fetch_failure_raises_fetch_error_with_the_manual_steps(tmp_path, monkeypatch):
    monkeypatch.setitem(dermamnist.URLS, dermamnist.FETCH_SIZE, "http://127.0.0.1:9/x")

    with pytest.raises(FetchError) as error:
        get_source("dermamnist").fetch(tmp_path)

    message = str(error.value)
    assert "could not download http://127.0.0.1:9/x" in message
    assert "https://zenodo.org/records/10519652/files/dermamnist_224.npz?download=1" in message
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_fetch_rejects_a_file_with_the_wrong_md5(tmp_path, monkeypatch):
    served = write_npz(tmp_path / "served" / "dermamnist_224.npz")
    monkeypatch.setitem(dermamnist.URLS, dermamnist.FETCH_SIZE, served.as_uri())
    destination = tmp_path / "dest"

    with pytest.raises(FetchError, match=r"expected 8974907d8e169bef5f5b96bc506ae45d"):
        dermamnist.fetch(destination)
    assert not (destination / "dermamnist_224.npz").exists()


def test_file_size_reads_medmnist_names():
    assert dermamnist.file_size("dermamnist.npz") == 28
    assert dermamnist.file_size("dermamnist_224.npz") == 224
    assert dermamnist.file_size("pathmnist_224.npz") is None
