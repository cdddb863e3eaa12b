"""Dermoscopic or clinical: the acquisition classifier, the choice of calibration, and the gates fitted per type.

The classifier is checked against scikit-learn on generated embedding clusters; the choice by hand; and
the whole path (fit_referral_gates on a generated two-type dataset, the bundle file, evaluation, and
``skintriage fit-gates`` on an existing bundle) with a tiny real model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from skintriage.cli import app
from skintriage.evaluation.evaluate import evaluate_bundle, write_evaluation
from skintriage.inference.predictor import Predictor
from skintriage.model.bundle import (
    ACQUISITION_FILE,
    METADATA_FILE,
    BundleError,
    load_bundle,
    sha256_of,
)
from skintriage.triage.acquisition import (
    AcquisitionClassifier,
    acquisition_accuracy,
    check_request,
    choose_acquisition,
    fit_acquisition_classifier,
    training_problem,
)
from skintriage.triage.calibration import (
    AcquisitionCalibration,
    calibrate_acquisition,
    probabilities_at_temperature,
    urgent_threshold,
)
from tests.helpers.two_types import CLASSES, PER_GROUP, build_two_type_bundle, config_for, write_untyped_folders

runner = CliRunner()


# --- the classifier on generated embeddings ------------------------------------------------------------------


def clusters(n_dermoscopic: int, n_clinical: int, *, seed: int, dims: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian clouds with unequal scales per axis, 3 apart along the first axis, in shuffled order."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.5, 4.0, dims)
    x = rng.standard_normal((n_dermoscopic + n_clinical, dims)) * scales + 10.0  # not centred: standardising matters
    kinds = np.array(["dermoscopic"] * n_dermoscopic + ["clinical"] * n_clinical, dtype=object)
    x[kinds == "clinical", 0] += 3.0
    order = rng.permutation(len(kinds))
    return x[order], kinds[order]


@pytest.fixture(scope="module")
def fitted() -> AcquisitionClassifier:
    x, kinds = clusters(600, 120, seed=0)  # imbalanced like the training data: about 5 to 1
    return fit_acquisition_classifier(x, kinds)


def test_the_classifier_separates_two_generated_clusters_of_unequal_size(fitted: AcquisitionClassifier) -> None:
    x, kinds = clusters(500, 500, seed=1)  # fresh draws
    accuracy = acquisition_accuracy(fitted, x, kinds)
    assert fitted.classes == ("clinical", "dermoscopic")  # sorted: the probability is of "dermoscopic"
    assert accuracy.n_images == 1000 and accuracy.n_not_recorded == 0
    assert accuracy.accuracy >= 0.9
    # class-balanced weights: the minority type is recognised about as well as the majority, not sacrificed
    for kind in ("dermoscopic", "clinical"):
        assert accuracy.by_acquisition[kind]["n_images"] == 500
        assert accuracy.by_acquisition[kind]["accuracy"] >= 0.88


def test_torch_prediction_equals_scikit_learns_predict_proba(fitted: AcquisitionClassifier) -> None:
    x, kinds = clusters(600, 120, seed=0)
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(class_weight="balanced", max_iter=5000).fit(scaler.transform(x), kinds)
    queries, _ = clusters(50, 50, seed=2)
    expected = reference.predict_proba(scaler.transform(queries))[:, 1]  # column 1: "dermoscopic"
    np.testing.assert_allclose(fitted.positive_probability(queries), expected, rtol=0, atol=1e-6)
    for query, p in zip(queries[:10], expected[:10], strict=True):
        kind, probability = fitted.predict(query)
        assert kind == ("dermoscopic" if p >= 0.5 else "clinical")
        assert probability == pytest.approx(max(p, 1 - p), abs=1e-6) and probability >= 0.5


def test_the_stored_tensors_reload_the_same_classifier(fitted: AcquisitionClassifier, tmp_path: Path) -> None:
    save_file(fitted.tensors(), str(tmp_path / "a.safetensors"))
    again = AcquisitionClassifier.from_bundle_parts(load_file(str(tmp_path / "a.safetensors")), fitted.summary())
    queries, _ = clusters(20, 20, seed=3)
    assert np.array_equal(again.positive_probability(queries), fitted.positive_probability(queries))
    assert again.classes == fitted.classes and fitted.summary()["threshold"] == 0.5
    assert {key: t.dtype for key, t in fitted.tensors().items()} == dict.fromkeys(
        ("mean", "scale", "coef", "intercept"), torch.float64
    )


def test_from_bundle_parts_names_missing_tensors_and_classes(fitted: AcquisitionClassifier) -> None:
    tensors = fitted.tensors()
    del tensors["coef"]
    with pytest.raises(ValueError, match=r"lack \['coef'\]"):
        AcquisitionClassifier.from_bundle_parts(tensors, fitted.summary())
    with pytest.raises(ValueError, match=r"acquisition_classifier\.classes is not two types"):
        AcquisitionClassifier.from_bundle_parts(fitted.tensors(), {"classes": ["clinical"]})


def test_predict_takes_one_embedding_and_refuses_the_wrong_width(fitted: AcquisitionClassifier) -> None:
    with pytest.raises(ValueError, match="use predict_many"):
        fitted.predict(np.zeros((2, 16)))
    with pytest.raises(ValueError, match="embedding has 3 dimensions; the acquisition classifier needs 16"):
        fitted.predict(np.zeros(3))


def test_fitting_needs_two_types_and_training_problem_says_which_is_short() -> None:
    x, _ = clusters(30, 0, seed=4)
    with pytest.raises(ValueError, match="two types"):
        fit_acquisition_classifier(x, ["dermoscopic"] * 30)
    assert training_problem(["dermoscopic"] * 30) == "only 0 clinical training images (at least 10 of each needed)"
    assert training_problem(["dermoscopic"] * 10 + ["clinical"] * 10) is None


def test_acquisition_accuracy_by_hand() -> None:
    # P(dermoscopic) = sigmoid(x): x > 0 reads dermoscopic
    classifier = AcquisitionClassifier(("clinical", "dermoscopic"), np.zeros(1), np.ones(1), np.ones(1), 0.0)
    x = np.array([[2.0], [1.0], [-1.0], [3.0], [-2.0]])
    # read:    d    d    c    d    c
    # truth:   d    c    c    -    c      right: yes, no, yes, (not recorded), yes
    accuracy = acquisition_accuracy(classifier, x, ["dermoscopic", "clinical", "clinical", None, "clinical"])
    assert accuracy.to_dict() == {
        "n_images": 4,
        "accuracy": 0.75,
        "by_acquisition": {
            "dermoscopic": {"n_images": 1, "accuracy": 1.0},
            "clinical": {"n_images": 3, "accuracy": pytest.approx(2 / 3)},
        },
        "n_not_recorded": 1,
    }
    assert classifier.predict(np.array([0.0])) == ("dermoscopic", 0.5)  # exactly 0.5 is the positive class


# --- choosing the calibration ---------------------------------------------------------------------------------


def entry(temperature: float, referral: float, urgent: float, fallback: str | None = None) -> AcquisitionCalibration:
    return AcquisitionCalibration(temperature, referral, 0.95, {"n_images": 40}, {"threshold": urgent}, fallback)


POOLED = entry(1.0, 0.2, 0.6)
BY_TYPE = {"dermoscopic": entry(0.8, 0.15, 0.65), "clinical": entry(1.4, 0.45, 0.8)}


def test_the_users_type_wins_and_the_models_disagreement_is_reported() -> None:
    used = choose_acquisition("clinical", ("dermoscopic", 0.9), BY_TYPE, POOLED)
    assert (used.kind, used.chosen_by, used.calibration) == ("clinical", "user", "clinical")
    assert (used.temperature, used.referral_threshold, used.urgent_threshold) == (1.4, 0.45, 0.8)
    assert used.probability == pytest.approx(0.1)  # the model's probability of the user's type
    assert used.why == (
        "you said it is a clinical photo (the model reads it as a dermoscopic image, probability 0.90); "
        "the temperature and thresholds fitted on clinical validation images are used"
    )


def test_auto_takes_the_models_reading() -> None:
    used = choose_acquisition("auto", ("dermoscopic", 0.97), BY_TYPE, POOLED)
    assert (used.kind, used.chosen_by, used.probability, used.referral_threshold) == (
        "dermoscopic",
        "model",
        0.97,
        0.15,
    )
    assert used.why.startswith("the model reads it as a dermoscopic image (probability 0.97)")


def test_auto_without_a_classifier_is_pooled_and_says_so() -> None:
    used = choose_acquisition("auto", None, BY_TYPE, POOLED)
    assert (used.kind, used.chosen_by, used.probability, used.calibration) == (None, "pooled", None, "pooled")
    assert (used.temperature, used.referral_threshold, used.urgent_threshold) == (1.0, 0.2, 0.6)
    assert "no acquisition classifier" in used.why and "pooled calibration" in used.why


def test_a_type_too_small_to_fit_and_a_bundle_without_types_use_the_pooled_values() -> None:
    small = {
        "clinical": entry(1.0, 0.2, 0.6, fallback="pooled: only 12 clinical validation images (at least 20 needed)")
    }
    used = choose_acquisition("clinical", None, small, POOLED)
    assert (used.calibration, used.referral_threshold) == ("clinical", 0.2)
    assert used.why.endswith("its temperature and thresholds are the pooled ones (pooled: only 12 clinical validation "
                             "images (at least 20 needed))")  # fmt: skip
    old = choose_acquisition("dermoscopic", None, {}, POOLED)
    assert (old.kind, old.chosen_by, old.calibration) == ("dermoscopic", "user", "pooled")
    assert "no per-acquisition calibration" in old.why


def test_an_unknown_request_is_refused_naming_the_choices() -> None:
    assert check_request("auto") == "auto"
    with pytest.raises(ValueError, match="acquisition must be one of auto, dermoscopic, clinical, not 'phone'"):
        choose_acquisition("phone", None, BY_TYPE, POOLED)


# --- the gates on a generated two-type dataset, end to end -------------------------------------------------------


@pytest.fixture(scope="module")
def two_types(tmp_path_factory):
    """(manifest, bundle with a pooled calibration, fitted gates, the saved bundle's folder, validation outputs,
    their recorded types, the validation manifest)."""
    built = build_two_type_bundle(tmp_path_factory.mktemp("two_types"))
    return built.manifest, built.bundle, built.gates, built.directory, built.outputs, built.kinds, built.val


def test_the_pooled_calibration_is_kept_and_each_type_gets_its_own(two_types) -> None:
    _, bundle, gates, _, outputs, kinds, _ = two_types
    pooled = bundle.metadata.calibration.to_json_dict()
    for key in ("temperature", "referral_threshold", "target_sensitivity", "validation"):
        assert gates.calibration[key] == pooled[key]
    probabilities = probabilities_at_temperature(outputs.logits, bundle.temperature)
    expected_urgent = urgent_threshold(probabilities, outputs.labels, CLASSES)
    assert gates.calibration["urgent"] == pytest.approx(expected_urgent)
    assert set(gates.calibration["by_acquisition"]) == {"dermoscopic", "clinical"}
    for kind in ("dermoscopic", "clinical"):
        rows = kinds == kind
        own = calibrate_acquisition(outputs.logits[rows], outputs.labels[rows], CLASSES).to_dict()
        assert gates.calibration["by_acquisition"][kind] == own  # the same validation logits, fitted alike
        assert own["fallback"] is None and own["validation"]["n_images"] == 2 * PER_GROUP
        assert own["validation"]["referral_sensitivity"] >= 0.95
        assert own["urgent"]["threshold"] >= own["referral_threshold"]


def test_the_classifier_is_fitted_on_training_types_and_scored_on_validation(two_types) -> None:
    _, _, gates, _, _, _, _ = two_types
    summary = gates.acquisition_classifier
    assert summary["classes"] == ["clinical", "dermoscopic"]
    assert summary["fitted_on"] == {"train_images": 48, "dermoscopic": 24, "clinical": 24}
    accuracy = summary["validation_accuracy"]
    assert accuracy["n_images"] == 48 and accuracy["accuracy"] >= 0.9
    assert set(accuracy["by_acquisition"]) == {"dermoscopic", "clinical"}
    assert gates.uncertainty["probabilities"] == "validation entropies at each image's acquisition-type temperature"


def test_the_saved_bundle_holds_the_classifier_file_and_predicts_with_it(two_types) -> None:
    manifest, _, gates, directory, _, _, val = two_types
    bundle = load_bundle(directory)
    assert bundle.metadata.acquisition_classifier.sha256 == sha256_of(directory / ACQUISITION_FILE)
    assert set(bundle.acquisition_tensors) == {"mean", "scale", "coef", "intercept"}
    assert bundle.metadata.calibration.to_json_dict()["by_acquisition"] == gates.calibration["by_acquisition"]
    predictor = Predictor(bundle)
    row = val.frame.iloc[0]
    image = Image.open(manifest.root / row["image"]).convert("RGB")
    prediction = predictor.predict(image)
    used = prediction.acquisition
    assert used.chosen_by == "model" and used.kind in ("dermoscopic", "clinical") and used.probability >= 0.5
    assert used.temperature == gates.calibration["by_acquisition"][used.kind]["temperature"]
    assert prediction.to_dict()["acquisition"] == used.to_dict()


def test_evaluation_reports_the_classifiers_accuracy_and_the_per_type_referral(two_types, tmp_path: Path) -> None:
    _, _, gates, directory, _, _, val = two_types
    result = evaluate_bundle(load_bundle(directory), val, name="val", progress=False, bootstrap=False)
    assert result.metrics["acquisition_accuracy"] == gates.acquisition_classifier["validation_accuracy"]
    deployed = result.metrics["referral_per_acquisition"]
    assert set(deployed["by_acquisition"]) == {"dermoscopic", "clinical"}
    if result.metrics["acquisition_accuracy"]["accuracy"] == 1.0:  # each image at its own type's threshold
        for kind, block in deployed["by_acquisition"].items():
            fitted = gates.calibration["by_acquisition"][kind]["validation"]
            assert block["sensitivity"] == pytest.approx(fitted["referral_sensitivity"])
            assert block["specificity"] == pytest.approx(fitted["referral_specificity"])
    write_evaluation(result, tmp_path / "eval")
    report = (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")
    assert "## Acquisition classifier" in report and "## Referral with per-acquisition thresholds" in report


def test_a_replaced_or_missing_classifier_file_is_refused(two_types, tmp_path: Path) -> None:
    _, _, _, directory, _, _, _ = two_types
    copy = Path(shutil.copytree(directory, tmp_path / "bundle"))
    tensors = load_file(str(copy / ACQUISITION_FILE))
    save_file({k: v + 1 for k, v in tensors.items()}, str(copy / ACQUISITION_FILE))
    with pytest.raises(BundleError, match=f"{ACQUISITION_FILE} does not match {METADATA_FILE}"):
        load_bundle(copy)
    (copy / ACQUISITION_FILE).unlink()
    with pytest.raises(BundleError, match=f"lists an acquisition classifier but has no {ACQUISITION_FILE}"):
        load_bundle(copy)


def test_fit_gates_refits_the_per_type_part_and_keeps_the_pooled_temperature(two_types, tmp_path: Path) -> None:
    _, _, _, directory, _, _, _ = two_types
    copy = Path(shutil.copytree(directory, tmp_path / "bundle"))
    write_untyped_folders(tmp_path / "data" / "untyped")
    path = copy / METADATA_FILE
    before = json.loads(path.read_text(encoding="utf-8"))
    edited = {**before, "training": {"config": config_for(tmp_path / "data", "untyped").model_dump()}}
    path.write_text(json.dumps(edited), encoding="utf-8")

    result = runner.invoke(app, ["fit-gates", "--checkpoint", str(copy)])

    assert result.exit_code == 0, result.output
    after = json.loads(path.read_text(encoding="utf-8"))
    for key in ("temperature", "referral_threshold", "validation"):
        assert after["calibration"][key] == before["calibration"][key]
    for kind in ("dermoscopic", "clinical"):  # no recorded types: both keep the pooled values, saying why
        refit = after["calibration"]["by_acquisition"][kind]
        assert refit["fallback"] == f"pooled: only 0 {kind} validation images (at least 20 needed)"
        assert refit["temperature"] == before["calibration"]["temperature"]
        assert refit["urgent"] == after["calibration"]["urgent"]
    assert "acquisition_classifier" not in after  # none could be fitted: the stale one is gone
    predictor = Predictor(load_bundle(copy))
    assert predictor.acquisition_classifier is None
    assert "Per acquisition type" in (copy / "MODEL_CARD.md").read_text(encoding="utf-8")
