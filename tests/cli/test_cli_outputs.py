"""What `skintriage predict` and `evaluate` tell the user they wrote, and how predict treats a file named twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, features
from typer.testing import CliRunner

from skintriage.cli import DEFAULT_BUNDLE, _expand, app
from skintriage.data.images import HEIF_REFUSED, IMAGE_SUFFIXES, PHOTO_SUFFIXES
from skintriage.evaluation import evaluate
from tests.helpers import write_image

runner = CliRunner()
needs_model = pytest.mark.skipif(
    not (DEFAULT_BUNDLE / "model.json").is_file(), reason=f"no bundled model at {DEFAULT_BUNDLE}"
)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def not_an_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a text file, not a JPEG", encoding="utf-8")
    return path


def deep(tmp_path: Path) -> Path:
    """A folder whose paths are longer than 80 characters, the width rich wraps at when output is not a terminal."""
    folder = tmp_path / ("a_folder_name_long_enough_that_every_path_in_it_passes_eighty_columns_" * 2)
    folder.mkdir()
    return folder


# --- a file named twice ----------------------------------------------------------------------------------


def test_expand_keeps_a_file_named_twice_once_where_it_first_appears(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    a, b = write_image(folder / "a.png", seed=1), write_image(folder / "b.jpg", seed=2)
    alias = folder / ".." / "photos" / "a.png"
    link = tmp_path / "link.png"
    link.symlink_to(b)

    assert _expand([b, folder, a, alias, link, b]) == [b, a]
    assert _expand([folder, folder]) == [a, b]
    missing = tmp_path / "absent.png"  # not a file: still kept once, and reported by the predictor as unreadable
    assert _expand([missing, tmp_path / "." / "absent.png"]) == [missing]


@needs_model
def test_predict_predicts_a_file_named_directly_and_through_its_folder_once(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    a, b = write_image(folder / "a.png", size=(64, 48), seed=1), write_image(folder / "b.png", size=(64, 48), seed=2)

    result = runner.invoke(app, ["predict", str(a), str(folder), str(folder / ".." / "photos" / "a.png"), "--json"])

    assert result.exit_code == 0, result.output
    assert [line["file"] for line in json_lines(result.stdout)] == [str(a), str(b)]


# --- a folder: every photo the decoder reads or refuses with advice --------------------------------------


def test_expand_lists_a_folders_photos_of_every_suffix_the_decoder_knows(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    photos = [write_image(folder / f"img{suffix}", seed=i) for i, suffix in enumerate(IMAGE_SUFFIXES)]
    photos.append(write_image(folder / "upper.JPG", seed=20))  # the suffix's case does not matter
    for suffix in (".heic", ".heif", ".avif"):  # refused by the decoder: listed, so that the user is told why
        (folder / f"phone{suffix}").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
        photos.append(folder / f"phone{suffix}")
    not_an_image(folder / "notes.txt")
    write_image(folder / "inner" / "deeper.jpg")  # not recursed into

    assert {".avif", ".webp", ".tif", ".tiff", ".heic"} <= set(PHOTO_SUFFIXES)
    assert _expand([folder]) == sorted(photos)


@needs_model
def test_predict_folder_predicts_webp_and_tiff_and_tells_to_convert_avif(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    webp = write_image(folder / "a.webp", size=(64, 48), seed=1, lossless=True)
    tiff = write_image(folder / "b.tif", size=(64, 48), seed=2)
    avif = folder / "c.avif"
    if features.check("avif"):
        write_image(avif, size=(64, 48), seed=3)
    else:
        avif.write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf")

    result = runner.invoke(app, ["predict", str(folder), "--json"])

    assert result.exit_code == 1, result.output  # the AVIF photo
    lines = json_lines(result.stdout)
    assert [line["file"] for line in lines] == [str(webp), str(tiff), str(avif)]
    assert all("referral" in line for line in lines[:2])
    assert lines[2] == {"file": str(avif), "error": f"{avif}: {HEIF_REFUSED}"}


# --- predict --saliency: where each overlay went ---------------------------------------------------------


@needs_model
def test_predict_saliency_json_names_each_overlay_on_stderr_and_keeps_stdout_json_lines(tmp_path: Path) -> None:
    folder = deep(tmp_path)
    first = write_image(folder / "one" / "mole.png", size=(64, 48), seed=1)
    second = write_image(folder / "two" / "mole.jpg", size=(64, 48), seed=2)  # same stem: must not overwrite
    broken = not_an_image(folder / "broken.jpg")
    out = folder / "saliency"

    result = runner.invoke(app, ["predict", str(first), str(broken), str(second), "--saliency", str(out), "--json"])

    assert result.exit_code == 1  # the broken file
    lines = json_lines(result.stdout)  # every stdout line is JSON
    assert [line["file"] for line in lines] == [str(first), str(broken), str(second)]
    named = [line.removeprefix("saliency overlay: ") for line in result.stderr.splitlines() if "overlay" in line]
    assert named == [str(out / "mole_saliency.png"), str(out / "mole_saliency_2.png")]
    assert sorted(out.iterdir()) == [Path(p) for p in named]
    for path, image in zip(named, (first, second), strict=True):
        with Image.open(path) as overlay, Image.open(image) as original:
            assert overlay.size == original.size


@needs_model
def test_predict_saliency_human_prints_each_overlay_unbroken_under_its_result(tmp_path: Path) -> None:
    folder = deep(tmp_path)
    image = write_image(folder / "mole.png", size=(64, 48), seed=3)
    out = folder / "saliency"

    result = runner.invoke(app, ["predict", str(image), "--saliency", str(out)])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    overlay = f"  saliency overlay: {out / 'mole_saliency.png'}"
    assert overlay in lines and (out / "mole_saliency.png").is_file()
    assert "saliency" not in result.stderr
    assert lines.index(overlay) > next(i for i, line in enumerate(lines) if "photo type:" in line)


# --- evaluate: every file written ------------------------------------------------------------------------


@needs_model
def test_evaluate_lists_every_file_it_wrote_the_plots_included(tmp_path: Path, monkeypatch) -> None:
    # DermNet's layout (images/<topic>/*.jpg) with generated pictures; the bootstrap CIs are switched off, as
    # they take most of a minute and have nothing to do with which files are written.
    root = tmp_path / "dermnet"
    for topic, n in (("basal_cell_carcinoma", 3), ("melanocytic_naevus", 3), ("melanoma", 2)):
        for i in range(n):
            write_image(root / "images" / topic / f"{i}.jpg", size=(64, 48), seed=10 * n + i)
    real = evaluate.evaluate_bundle
    monkeypatch.setattr(evaluate, "evaluate_bundle", lambda *a, **k: real(*a, **{**k, "bootstrap": False}))
    out = deep(tmp_path) / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("left by the user: not written by evaluate", encoding="utf-8")

    result = runner.invoke(app, ["evaluate", "--source", "dermnet", "--root", str(root), "--out", str(out)])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("wrote ") and line.endswith(" files:"))
    listed = [line.removeprefix("  ") for line in lines[start + 1 :] if line.startswith(f"  {out}")]
    on_disk = sorted(str(p) for p in out.iterdir() if p.name != "notes.txt")
    assert listed == on_disk and lines[start] == f"wrote {len(on_disk)} files:"
    names = {Path(p).name for p in listed}
    assert {"metrics.json", "predictions.csv", "report.md"} <= names
    assert {"roc.png", "reliability.png", "confusion.png"} <= names  # the plots
