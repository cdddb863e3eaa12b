"""Deployment variants end to end on a tiny generated bundle: export, refit at the variant's precision, the parity
report against float32, the default chosen by the rule, and the predictor's refusal of an uncalibrated precision."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skintriage.cli import app
from skintriage.common.errors import ArgumentError
from skintriage.inference.batch import bundle_dataset, loader_for, predict_outputs
from skintriage.inference.predictor import Predictor
from skintriage.inference.variants import REFERENCE, VARIANTS, VariantError, load_forward
from skintriage.model.bundle import METADATA_FILE, BundleError, load_bundle, read_metadata, save_bundle, sha256_of
from skintriage.training.config import TrainConfig
from skintriage.training.data import training_manifest
from skintriage.training.deployment import MIN_LEVEL_AGREEMENT, admissibility, compare_metrics, export_variants
from skintriage.training.gates import refit_referral_gates
from skintriage.triage.calibration import calibrate
from tests.helpers.two_types import CLASSES, build_two_type_bundle, config_for, write_untyped_folders

EXPORTED = ("onnx-float32", "onnx-int8", "torch-bfloat16")
pytestmark = pytest.mark.slow  # three exports with a refit each (about 2 minutes on 2 cores)
runner = CliRunner()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A calibrated two-type bundle with its gates and no variants, whose training config names class folders
    (the config is what the exporter rebuilds the validation split from)."""
    root = tmp_path_factory.mktemp("variants")
    directory = build_two_type_bundle(root).directory
    write_untyped_folders(root / "data" / "untyped", per_class=80)
    path = directory / METADATA_FILE
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata["training"]["config"] = config_for(root / "data", "untyped").model_dump()
    path.write_text(json.dumps(metadata), encoding="utf-8")
    bundle, val = validation_split(directory)  # calibrated on that split, as training calibrates a bundle
    outputs = predict_outputs(bundle.model, loader_for(bundle_dataset(bundle, val)))
    calibration = calibrate(outputs.logits, outputs.labels, CLASSES).to_dict()
    save_bundle(directory, bundle.model, {**bundle.metadata.to_json_dict(), "calibration": calibration}, half=True,
                uncertainty_tensors=bundle.uncertainty_tensors, acquisition_tensors=bundle.acquisition_tensors)  # fmt: skip
    refit_referral_gates(directory, progress=False)
    return directory


def validation_split(directory: Path):
    bundle = load_bundle(directory)
    config = TrainConfig.model_validate(bundle.metadata.training.config)
    return bundle, training_manifest(config, progress=False).manifest.where(split="val", diagnoses=bundle.classes)


@pytest.fixture(scope="module")
def exported(base: Path, tmp_path_factory) -> Path:
    """A copy of ``base`` with every variant exported into it (each refitted on the generated validation split)."""
    directory = Path(shutil.copytree(base, tmp_path_factory.mktemp("exported") / "bundle"))
    export_variants(directory, list(EXPORTED), calibration_images=64, speed_repeats=3, progress=False)
    return directory


def test_each_variant_records_its_engine_file_and_a_parity_report_on_validation(exported: Path) -> None:
    metadata = read_metadata(exported)
    assert set(metadata.variants) == set(EXPORTED)
    for name, entry in metadata.variants.items():
        spec = VARIANTS[name]
        assert (entry.engine, entry.precision, entry.file) == (spec.engine, spec.precision, spec.file)
        if spec.file is not None:
            assert entry.sha256 == sha256_of(exported / spec.file)
        validation = entry.parity["sets"]["validation"]
        n = len(validation_split(exported)[1])
        assert validation["n_images"] == n >= 20
        assert 0.0 <= validation["level_agreement"] <= 1.0
        assert validation["level_disagreements"] == round((1 - validation["level_agreement"]) * n)
        assert set(validation["metrics"]) >= {"balanced_accuracy", "macro_auc", "referral_auc", "ece"}
        assert isinstance(entry.admissible, bool) and entry.verdict
        assert entry.speed["batch_1_ms"] > 0 and entry.speed["torch-float32_batch_1_ms"] > 0
    same = metadata.variants["onnx-float32"].parity["sets"]["validation"]
    assert same["max_abs_probability"] <= 1e-4 and same["level_agreement"] == 1.0  # the same function in float32
    moved = metadata.variants["torch-bfloat16"].parity["sets"]["validation"]
    assert moved["max_abs_probability"] > 1e-4  # an 8-bit mantissa moves the probabilities


@pytest.mark.parametrize("name", EXPORTED)
def test_a_variants_calibration_is_fitted_on_its_own_outputs(exported: Path, name: str) -> None:
    """Recomputed here: the variant's validation logits, calibrated, give the temperature and threshold it records."""
    bundle, val = validation_split(exported)
    outputs = predict_outputs(
        bundle.model, loader_for(bundle_dataset(bundle, val)), embeddings=True, engine=load_forward(bundle, name)
    )
    fitted = calibrate(outputs.logits, outputs.labels, CLASSES)
    recorded = bundle.metadata.variants[name].calibration
    assert recorded.temperature == pytest.approx(fitted.temperature, rel=1e-9)
    assert recorded.referral_threshold == pytest.approx(fitted.referral_threshold, rel=1e-9)
    assert set(recorded.by_acquisition) == {"dermoscopic", "clinical"}  # pooled here: no recorded types


def test_the_default_is_the_fastest_admissible_variant_at_batch_1(exported: Path) -> None:
    metadata = read_metadata(exported)
    speeds = {REFERENCE: next(iter(metadata.variants.values())).speed["torch-float32_batch_1_ms"]}
    speeds |= {name: v.speed["batch_1_ms"] for name, v in metadata.variants.items() if v.admissible}
    assert metadata.default_variant == min(speeds, key=speeds.get)


def test_the_predictor_runs_a_variant_at_the_thresholds_fitted_for_it(exported: Path) -> None:
    for name in EXPORTED:
        entry = read_metadata(exported).variants[name]
        predictor = Predictor.load(exported, variant=name)
        assert predictor.variant == name
        assert predictor.bundle.temperature == entry.calibration.temperature
        assert predictor.policy.referral_threshold == entry.calibration.referral_threshold
        assert predictor.gate.ood_threshold == entry.uncertainty.ood_threshold


def test_a_bundle_calibrated_only_in_float32_refuses_another_precision(base: Path) -> None:
    for name in EXPORTED:
        with pytest.raises(VariantError, match=f"holds no calibration for the variant {name}") as raised:
            Predictor.load(base, variant=name)
        assert f"skintriage export --checkpoint {base} --variant {name}" in str(raised.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "auto" on a float32-only bundle is the normal case
        assert Predictor.load(base).variant == REFERENCE


def test_a_variant_file_changed_after_calibration_is_refused_and_auto_falls_back(
    exported: Path, tmp_path: Path
) -> None:
    directory = Path(shutil.copytree(exported, tmp_path / "changed"))
    metadata = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
    metadata["default_variant"] = "onnx-int8"  # whatever was fastest here, make the changed file the default
    (directory / METADATA_FILE).write_text(json.dumps(metadata), encoding="utf-8")
    path = directory / VARIANTS["onnx-int8"].file
    shutil.copyfile(directory / VARIANTS["onnx-float32"].file, path)  # a valid ONNX file, but not the calibrated one
    with pytest.raises(VariantError, match="does not match") as raised:
        Predictor.load(directory, variant="onnx-int8")
    assert str(path) in str(raised.value)
    with pytest.warns(UserWarning, match="instead of the default variant onnx-int8"):
        predictor = Predictor.load(directory)
    assert predictor.variant == REFERENCE and "cannot run here" in predictor.backend_choice.reason
    path.unlink()
    with pytest.warns(UserWarning, match="does not exist"):
        assert Predictor.load(directory).variant == REFERENCE


def test_saliency_keeps_the_variants_probabilities(exported: Path) -> None:
    from PIL import Image

    predictor = Predictor.load(exported, variant="torch-bfloat16")
    image = Image.new("RGB", (48, 40), (90, 60, 45))
    plain, explained = predictor.predict(image), predictor.predict(image, with_saliency=True)
    assert explained.heatmap is not None and explained.probabilities == plain.probabilities


def test_the_reference_and_unknown_names_are_refused_by_the_exporter(base: Path) -> None:
    with pytest.raises(BundleError, match="is the bundle itself"):
        export_variants(base, [REFERENCE], progress=False)
    with pytest.raises(ArgumentError, match="unknown variant 'fp8'"):
        export_variants(base, ["onnx-float32", "fp8"], progress=False)


def test_the_export_command_exports_refits_and_names_the_default(base: Path, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(base, tmp_path / "cli"))
    result = runner.invoke(app, ["export", "--checkpoint", str(directory), "--variant", "onnx-float32"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "onnx-float32: model.onnx" in output and "referral levels agree on 100.00%" in output
    assert f"default variant: {read_metadata(directory).default_variant}" in output


# --- the rule, by hand --------------------------------------------------------------------------------------------


def test_compare_metrics_and_admissibility_by_hand() -> None:
    reference = {"balanced_accuracy": 0.6, "macro_auc": 0.9, "ece": 0.03, "referral": {"auc": 0.9, "sensitivity": 0.95,
                 "specificity": 0.5}, "ci95": {"balanced_accuracy": [0.55, 0.65], "macro_auc": [0.88, 0.92],
                 "ece": [0.02, 0.05], "referral_auc": [0.88, 0.92], "referral_sensitivity": [0.93, 0.97],
                 "referral_specificity": [0.45, 0.55]}}  # fmt: skip
    variant = {"balanced_accuracy": 0.54, "macro_auc": 0.95, "ece": 0.01, "referral": {"auc": 0.9, "sensitivity": 0.95,
               "specificity": 0.5}}  # fmt: skip
    compared = compare_metrics(reference, variant)
    assert compared["balanced_accuracy"] == {"float32": 0.6, "float32_ci95": [0.55, 0.65], "variant": 0.54,
                                             "within_ci": False, "not_worse": False}  # fmt: skip
    assert compared["macro_auc"]["within_ci"] is False and compared["macro_auc"]["not_worse"] is True  # better
    assert compared["ece"]["within_ci"] is False and compared["ece"]["not_worse"] is True  # lower is better
    report = {"sets": {"validation": {"metrics": compared, "level_agreement": 0.99}}}
    verdict = admissibility(report)
    assert verdict["admissible"] is False
    assert "balanced_accuracy worse than float32's 95% CI" in verdict["verdict"]
    assert "99.00% of validation images (at least 99.5% needed)" in verdict["verdict"]
    compared["balanced_accuracy"]["not_worse"] = True
    report["sets"]["validation"]["level_agreement"] = MIN_LEVEL_AGREEMENT
    assert admissibility(report)["admissible"] is True
    assert np.isclose(MIN_LEVEL_AGREEMENT, 0.995)
