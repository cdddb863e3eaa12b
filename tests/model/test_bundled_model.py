"""The bundled model (src/skintriage/model/default, package data): it loads, predicts, and reproduces the committed
benchmark metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skintriage.cli import app
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.model.bundle import load_bundle
from tests.helpers import REPO, shared_data, write_image

COMMITTED = REPO / "experiments" / "pretrained_lite0" / "eval"
runner = CliRunner()


@pytest.fixture(scope="module")
def bundle_dir() -> Path:
    if not (DEFAULT_BUNDLE / "model.json").is_file():
        pytest.skip(f"no bundled model at {DEFAULT_BUNDLE}")
    return DEFAULT_BUNDLE


def assert_same(actual: object, expected: object, where: str = "metrics") -> None:
    """Equal, with floats allowed to differ by 1e-6: float32 kernels round differently across CPUs and torch builds."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(actual, int | float) and math.isclose(actual, expected, rel_tol=0, abs_tol=1e-6), where
    else:
        assert actual == expected, where


def test_the_bundled_model_is_small_calibrated_and_says_what_it_was_not_trained_on(bundle_dir: Path) -> None:
    assert (bundle_dir / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    bundle = load_bundle(bundle_dir)
    assert "mcc" not in bundle.classes and "metastasis" not in bundle.classes
    assert bundle.metadata.calibration.temperature > 0
    assert 0 < bundle.metadata.calibration.referral_threshold < 1
    card = (bundle_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Merkel cell carcinoma" in card and "not a" in card.lower()


def test_predict_reports_probabilities_and_refuses_a_broken_file(bundle_dir: Path, tmp_path: Path) -> None:
    image = write_image(tmp_path / "lesion.png", size=(300, 200), seed=4)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image", encoding="utf-8")

    result = runner.invoke(app, ["predict", str(image), str(broken), "--json"])

    assert result.exit_code == 1
    prediction, error = (json.loads(line) for line in result.stdout.splitlines())  # JSON Lines, in argument order
    assert prediction["file"] == str(image)
    assert "not a medical device" in prediction["disclaimer"]
    assert math.isclose(sum(prediction["probabilities"].values()), 1.0, abs_tol=1e-5)
    metadata = json.loads((bundle_dir / "model.json").read_text(encoding="utf-8"))
    referral_threshold = metadata["calibration"]["referral_threshold"]
    image_rules = {"malignancy_above_referral_threshold", "malignancy_above_urgent_threshold"}
    assert bool(image_rules & set(prediction["referral"]["rules"])) == (
        prediction["malignancy_probability"] >= referral_threshold
    )
    assert prediction["referral"]["level"] in {"routine", "refer", "urgent"}
    assert error == {
        "file": str(broken),
        "error": f"{broken}: not a recognised image file (JPEG, PNG, TIFF, BMP, GIF, WebP)",
    }


@pytest.mark.slow
def test_evaluate_reproduces_the_committed_isic_2018_test_metrics(bundle_dir: Path, tmp_path: Path) -> None:
    root = shared_data("ham10000_isic2018_224")
    expected = json.loads((COMMITTED / "isic2018_test" / "metrics.json").read_text(encoding="utf-8"))

    result = runner.invoke(
        app, ["evaluate", "--source", "isic2018_test", "--root", str(root), "--out", str(tmp_path / "eval")]
    )

    assert result.exit_code == 0, result.output
    actual = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert actual["n_images"] == 1511
    assert_same(actual, expected)
    for name in ("predictions.csv", "report.md", "roc.png", "reliability.png", "confusion.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
