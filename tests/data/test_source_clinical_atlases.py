"""SD-198 and MED-NODE loaders, DermNet's extra topics, SD-198's caption bar, and cross-source duplicates.

Generated folders in the real layouts run everywhere; the real shared copies are checked where present.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skintriage.data.dataset import ManifestDataset, prepare_pixels
from skintriage.data.presets import caption_bar_rows, crop_caption_bar, remove_artefact
from skintriage.data.records import Manifest
from skintriage.data.sources import get_source
from skintriage.data.sources.files import MetadataError
from skintriage.data.splits import (
    audit_leakage,
    concat_hashes,
    hash_images,
    resolve_cross_source_duplicates,
)
from skintriage.data.taxonomy import UnknownLabelError
from tests.helpers import shared_data, write_image

SD198_HEADER = "file,sd198_class,width,height,md5_original,source_repo_path,orig_width,orig_height"


def captioned(path: Path, *, size: tuple[int, int] = (80, 60), bar: int = 6, seed: int = 0) -> Path:
    """A noisy skin-coloured photo with a light grey caption bar (and dark 'text') along the bottom."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.clip(rng.normal((180, 120, 100), 25, (height, width, 3)), 0, 255).astype(np.uint8)
    if bar:
        pixels[height - bar :] = 207
        pixels[height - bar + 2 : height - 1, 5 : width // 3] = 90  # caption text
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_sd198(root: Path) -> Path:
    rows = [
        ("Basal_Cell_Carcinoma", "000607HB"),
        ("Cutaneous_Horn", "006016VB"),
        ("Keloid", "10266-chickenpox"),
        ("Nevus_Spilus", "011474HB"),
    ]
    lines = [SD198_HEADER]
    for seed, (label, stem) in enumerate(rows):
        captioned(root / "images" / label / f"{stem}.png", seed=seed)
        lines.append(f"images/{label}/{stem}.png,{label},80,60,{seed:032x},raw/{label}/{stem}.jpg,1640,1181")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_sd198_reads_metadata_and_maps_the_lesion_classes(tmp_path: Path) -> None:
    frame = get_source("sd198").load(write_sd198(tmp_path)).frame
    assert frame["image_id"].tolist()[0] == "sd198:Basal_Cell_Carcinoma/000607HB"
    assert frame["diagnosis"].tolist() == ["bcc", "akiec", "non_neoplastic", "nv"]
    assert frame["acquisition"].unique().tolist() == ["clinical"]
    assert frame["lesion_id"].tolist()[1] == f"md5:{1:032x}"


def test_sd198_and_med_node_from_class_folders_alone(tmp_path: Path) -> None:
    for label, name in (("melanoma", "136733"), ("naevus", "1"), ("naevus", "2")):
        write_image(tmp_path / "med_node" / label / f"{name}.jpg", seed=len(name))
    frame = get_source("med_node").load(tmp_path / "med_node").frame
    assert frame["diagnosis"].tolist() == ["mel", "nv", "nv"]
    assert frame["image_id"].tolist() == ["med_node:melanoma/136733", "med_node:naevus/1", "med_node:naevus/2"]

    write_sd198(tmp_path / "sd198")
    (tmp_path / "sd198" / "metadata.csv").unlink()
    assert sorted(get_source("sd198").load(tmp_path / "sd198").frame["diagnosis"]) == [
        "akiec",
        "bcc",
        "non_neoplastic",
        "nv",
    ]


def test_an_unmapped_class_and_a_malformed_row_are_named(tmp_path: Path) -> None:
    root = write_sd198(tmp_path / "sd198")
    captioned(root / "images" / "Psoriasis" / "x.png")
    with (root / "metadata.csv").open("a", encoding="utf-8") as table:
        table.write("images/Psoriasis/x.png,Psoriasis,80,60,,,,\n")
    with pytest.raises(UnknownLabelError, match=r"'Psoriasis' \(metadata.csv:6\).*sd198.yaml"):
        get_source("sd198").load(root)

    (tmp_path / "med").mkdir()
    (tmp_path / "med" / "metadata.csv").write_text("file,label\nmelanoma/a.jpg,melanoma,extra\n", encoding="utf-8")
    with pytest.raises(MetadataError, match=r"metadata.csv:2: expected 2 fields, found 3"):
        get_source("med_node").load(tmp_path / "med")


def test_the_caption_bar_is_found_and_cropped_and_a_plain_photo_is_untouched(tmp_path: Path) -> None:
    with_bar = np.asarray(Image.open(captioned(tmp_path / "a.png", bar=6)))
    plain = np.asarray(Image.open(captioned(tmp_path / "b.png", bar=0)))
    assert caption_bar_rows(with_bar) == 6
    assert crop_caption_bar(with_bar).shape == (54, 80, 3)
    assert np.array_equal(crop_caption_bar(with_bar), with_bar[:54])
    assert caption_bar_rows(plain) == 0 and crop_caption_bar(plain) is plain
    # a photo that is all light grey is never cropped by more than 30% of its height
    assert caption_bar_rows(np.full((100, 40, 3), 210, np.uint8)) == 30
    with pytest.raises(ValueError, match="unknown image artefact 'logo'; known: corner_watermark, caption_bar"):
        remove_artefact(with_bar, "logo")


def test_a_dataset_removes_each_masked_sources_own_artefact(tmp_path: Path) -> None:
    sd198 = get_source("sd198").load(write_sd198(tmp_path / "sd198"))
    dermnet_root = tmp_path / "dermnet"
    captioned(dermnet_root / "images" / "pilar_cyst" / "1.png", bar=0)
    (dermnet_root / "metadata.csv").write_text("file,dermnet_class\nimages/pilar_cyst/1.png,Pilar cyst\n")
    dermnet = get_source("dermnet").load(dermnet_root)
    both = Manifest.concat([sd198, dermnet], root=tmp_path)
    classes = ["bcc", "akiec", "nv", "other_benign", "non_neoplastic"]

    masked = ManifestDataset(both, transform=None, class_names=classes, mask_watermark_sources=["sd198", "dermnet"])
    unmasked = ManifestDataset(both, transform=None, class_names=classes)
    assert masked.pixels(0).shape == (54, 80, 3) and unmasked.pixels(0).shape == (60, 80, 3)
    corner = masked.pixels(4)[45:, :20]  # DermNet: bottom-left quarter filled with one colour, size kept
    assert masked.pixels(4).shape == (60, 80, 3) and len(np.unique(corner.reshape(-1, 3), axis=0)) == 1
    # the bar is cropped before the cache resize, so the cached image has no bar left at any size
    image = Image.open(tmp_path / "sd198" / "images" / "Keloid" / "10266-chickenpox.png")
    assert caption_bar_rows(prepare_pixels(image, artefact="caption_bar", side=27)) == 0


def test_a_photo_shared_by_two_sources_moves_to_the_most_held_out_split(tmp_path: Path) -> None:
    first = tmp_path / "first"
    for n in range(4):
        write_image(first / "images" / "pilar_cyst" / f"{n}.png", size=(48, 40), seed=n)
    (first / "metadata.csv").write_text(
        "file,dermnet_class\n" + "".join(f"images/pilar_cyst/{n}.png,Pilar cyst\n" for n in range(4))
    )
    second = tmp_path / "second"
    (second / "images" / "keloid_scar").mkdir(parents=True)
    shutil.copy(first / "images" / "pilar_cyst" / "2.png", second / "images" / "keloid_scar" / "copy.png")
    write_image(second / "images" / "keloid_scar" / "own.png", size=(48, 40), seed=9)
    (second / "metadata.csv").write_text(
        "file,dermnet_class\nimages/keloid_scar/copy.png,Keloid scar\nimages/keloid_scar/own.png,Keloid scar\n"
    )
    a = get_source("dermnet").load(first)
    b = get_source("dermnet").load(second)
    a = a.with_splits(["train", "train", "train", "val"])
    b = b.with_splits(["test", "train"])
    combined = Manifest.concat([a, b], root=tmp_path)
    hashes = concat_hashes([hash_images(a), hash_images(b)])
    assert audit_leakage(combined, hashes).leaks == 1

    resolved, moves = resolve_cross_source_duplicates(combined, hashes)
    assert [(m.image_id, m.from_split, m.to_split) for m in moves] == [("dermnet:pilar_cyst/2", "train", "test")]
    assert resolved.frame["split"].tolist() == ["train", "train", "test", "val", "test", "train"]
    assert audit_leakage(resolved, hashes).leaks == 0
    assert resolve_cross_source_duplicates(resolved, hashes)[1] == []

    with pytest.raises(ValueError, match="4 rows have no split"):
        resolve_cross_source_duplicates(Manifest.concat([get_source("dermnet").load(first), b], root=tmp_path), hashes)


# --- the real shared copies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "folder", "counts"),
    [
        (
            "sd198",
            "sd198_lesions",
            {"mel": 61, "akiec": 61, "vasc": 62, "bcc": 30, "df": 30, "non_neoplastic": 30, "nv": 26},
        ),
        ("med_node", "med_node", {"nv": 100, "mel": 70}),
        ("dermnet", "dermnet_extra", {"non_neoplastic": 444, "other_benign": 31, "vasc": 27}),
        (
            "fitzpatrick17k",
            "fitzpatrick17k_subset",
            {
                "non_neoplastic": 344,
                "bcc": 213,
                "scc": 187,
                "mel": 88,
                "other_malignant": 81,
                "akiec": 80,
                "other_benign": 54,
                "df": 23,
                "vasc": 9,
                "bkl": 5,
            },
        ),
    ],
)
def test_real_clinical_sources_map_every_label_and_split_without_leakage(
    source: str, folder: str, counts: dict
) -> None:
    from skintriage.data.splits import assign_splits

    root = shared_data(folder)
    registered = get_source(source)
    manifest = registered.load(root)
    frame = manifest.frame
    assert frame["diagnosis"].value_counts().to_dict() == counts
    assert (frame["acquisition"] == "clinical").all()
    hashes = hash_images(manifest)
    split = assign_splits(manifest, fractions=registered.split_fractions, seed=0, hashes=hashes)
    assert set(split.frame["split"]) == {"train", "val", "test"}
    assert audit_leakage(split, hashes).leaks == 0


def test_real_sd198_caption_bars_are_cropped_and_med_node_has_none() -> None:
    sd198 = get_source("sd198").load(shared_data("sd198_lesions"))
    rows = [caption_bar_rows(np.asarray(sd198.read_image(image))) for image in sd198.frame["image"]]
    assert sum(r > 0 for r in rows) >= 293  # PROVENANCE.md: about 293 of the 300 carry the bar
    med_node = get_source("med_node").load(shared_data("med_node"))
    assert not any(caption_bar_rows(np.asarray(med_node.read_image(image))) for image in med_node.frame["image"])
