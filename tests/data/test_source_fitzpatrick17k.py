"""Fitzpatrick17k loader and fetch: the real fitzpatrick17k.csv columns, images named <md5hash>.jpg."""

from __future__ import annotations

from pathlib import Path

import pytest

from skintriage.data.records import ManifestError
from skintriage.data.sources import fitzpatrick17k
from skintriage.data.sources.files import MetadataError
from skintriage.data.sources.registry import FetchError, get_source
from skintriage.data.taxonomy import UnknownLabelError, label_map
from tests.helpers import write_image

HEADER = (
    "md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,nine_partition_label,three_partition_label,qc,url,url_alphanum"
)
OFFLINE = "http://127.0.0.1:9"  # the discard port: the connection is refused at once


def row(md5: str, scale: str, label: str, nine: str, three: str, url: str = f"{OFFLINE}/a.jpg") -> str:
    return f"{md5},{scale},{scale},{label},{nine},{three},,{url},{url.replace(':', '').replace('/', '')}"


ROWS = (
    row("5e82a45bc5d78bd24ae9202d194423f8", "3", "drug induced pigmentary changes", "inflammatory", "non-neoplastic"),
    row("b87804452f60aa162a6d29c0f66a2466", "2", "melanoma", "malignant melanoma", "malignant"),
    row("45f7fe0e10214e32e890cad9d29d4811", "6", "kaposi sarcoma", "malignant dermal", "malignant"),
    row("d2bac3c9e4499032ca8e9b07c7d3bc40", "-1", "dermatofibroma", "benign dermal", "benign"),
    row("b09233673fc585369e723ec841ed0acb", "5", "actinic keratosis", "malignant epidermal", "malignant"),
)


def md5_of(line: str) -> str:
    return line.split(",", 1)[0]


def write_fitzpatrick(root: Path, rows: tuple[str, ...] = ROWS, header: str = HEADER) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "fitzpatrick17k.csv").write_text("\n".join((header, *rows)) + "\n", encoding="utf-8")
    for seed, line in enumerate(rows):
        write_image(root / "images" / f"{md5_of(line)}.jpg", seed=seed)
    return root


def test_loads_labels_groups_and_skin_types(tmp_path: Path) -> None:
    manifest = get_source("fitzpatrick17k").load(write_fitzpatrick(tmp_path))
    frame = manifest.frame

    assert len(manifest) == len(ROWS)
    assert frame["image_id"].tolist() == [md5_of(line) for line in ROWS]
    assert frame["image"][1] == "images/b87804452f60aa162a6d29c0f66a2466.jpg"
    assert frame["diagnosis"].tolist() == ["non_neoplastic", "mel", "other_malignant", "df", "akiec"]
    assert frame["triage_group"].tolist() == [
        "benign",
        "other_malignant",
        "other_malignant",
        "benign",
        "other_malignant",
    ]
    assert frame["skin_type"].fillna("unrated").tolist() == ["III", "II", "VI", "unrated", "V"]  # -1: not rated
    assert set(frame["acquisition"]) == {"clinical"}
    assert frame["origin"][0] == "fitzpatrick17k.csv:2"


def test_unknown_label_raises_naming_label_source_and_row(tmp_path: Path) -> None:
    rows = (*ROWS[:2], row("0a94359e7eaacd7178e06b2823777789", "1", "psoriasis vulgaris", "inflammatory", "x"))
    with pytest.raises(
        UnknownLabelError, match=r"source 'fitzpatrick17k': label 'psoriasis vulgaris' \(fitzpatrick17k\.csv:4\)"
    ):
        get_source("fitzpatrick17k").load(write_fitzpatrick(tmp_path, rows))


def test_bad_fitzpatrick_scale_names_the_row(tmp_path: Path) -> None:
    rows = (row("0a94359e7eaacd7178e06b2823777789", "7", "psoriasis", "inflammatory", "non-neoplastic"),)
    with pytest.raises(MetadataError, match=r"fitzpatrick17k\.csv:2: fitzpatrick_scale '7' is not one of -1, 1,"):
        get_source("fitzpatrick17k").load(write_fitzpatrick(tmp_path, rows))


def test_malformed_table_and_missing_column_are_named(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"fitzpatrick17k\.csv:3: expected 9 fields, found 8"):
        get_source("fitzpatrick17k").load(write_fitzpatrick(tmp_path, (ROWS[0], ROWS[1].rsplit(",", 1)[0])))
    with pytest.raises(MetadataError, match=r"missing column.*'fitzpatrick_scale'"):
        get_source("fitzpatrick17k").load(
            write_fitzpatrick(tmp_path, header=HEADER.replace("fitzpatrick_scale", "fst"))
        )


def test_missing_images_are_named_or_reported(tmp_path: Path) -> None:
    root = write_fitzpatrick(tmp_path)
    (root / "images" / f"{md5_of(ROWS[2])}.jpg").unlink()
    with pytest.raises(ManifestError, match=r"fitzpatrick17k\.csv:4 \(images/45f7fe0e.*\.jpg\): file not found"):
        get_source("fitzpatrick17k").load(root)
    manifest = get_source("fitzpatrick17k").load(root, on_missing="report")
    assert manifest.missing_images == [md5_of(ROWS[2])]
    assert len(manifest.with_images()) == len(ROWS) - 1


def test_map_lists_all_114_conditions() -> None:
    assert len(label_map("fitzpatrick17k").labels) == 114


def test_fetch_offline_without_csv_gives_manual_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fitzpatrick17k, "CSV_URL", f"{OFFLINE}/fitzpatrick17k.csv")
    with pytest.raises(FetchError, match="could not download") as error:
        get_source("fitzpatrick17k").fetch(tmp_path)
    assert "github.com/mattgroh/fitzpatrick17k" in str(error.value)
    assert not (tmp_path / "fitzpatrick17k.csv").exists()


def test_fetch_lists_images_that_could_not_be_downloaded(tmp_path: Path) -> None:
    root = write_fitzpatrick(tmp_path)
    (root / "images" / f"{md5_of(ROWS[1])}.jpg").unlink()
    (root / "images" / f"{md5_of(ROWS[3])}.jpg").unlink()
    with pytest.raises(FetchError, match=r"2 of 5 images could not be downloaded") as error:
        get_source("fitzpatrick17k").fetch(root)
    assert "fitzpatrick17k.csv:3" in str(error.value) and "fitzpatrick17k.csv:5" in str(error.value)
    assert "To obtain" not in str(error.value) and "by hand" in str(error.value)


def test_fetch_gives_up_early_when_nothing_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_fitzpatrick(tmp_path)
    for line in ROWS:
        (root / "images" / f"{md5_of(line)}.jpg").unlink()
    monkeypatch.setattr(fitzpatrick17k, "GIVE_UP_AFTER", 2)
    with pytest.raises(FetchError, match=r"the first 2 image downloads all failed \(offline\?\)") as error:
        get_source("fitzpatrick17k").fetch(root)
    assert "md5hash>.jpg" in str(error.value)


def test_fetch_skips_images_already_present(tmp_path: Path) -> None:
    root = write_fitzpatrick(tmp_path)
    get_source("fitzpatrick17k").fetch(root)  # every URL is unreachable, but nothing needs downloading
    assert len(get_source("fitzpatrick17k").load(root)) == len(ROWS)
