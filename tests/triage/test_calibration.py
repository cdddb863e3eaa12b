"""Calibration: hand-worked softmax and NLL, temperature recovery on simulated data, and the referral threshold."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import softmax

from skintriage import metrics
from skintriage.triage import calibration
from skintriage.triage.calibration import (
    Calibration,
    calibrate,
    fit_temperature,
    negative_log_likelihood,
    probabilities_at_temperature,
    temperatures_by_acquisition,
)

CLASSES = ["mel", "nv", "bcc", "bkl", "df"]  # mel and bcc are malignant


def simulate(n: int, *, temperature: float, seed: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z ~ N(0, scale²) and labels drawn from softmax(z / temperature): T = ``temperature`` is exactly right."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, scale, size=(n, len(CLASSES)))
    cumulative = softmax(logits / temperature, axis=1).cumsum(axis=1)
    labels = (cumulative < rng.random((n, 1))).sum(axis=1)
    return logits, np.minimum(labels, len(CLASSES) - 1)


# --- probabilities and NLL by hand -------------------------------------------------------------------


def test_probabilities_at_temperature_by_hand():
    logits = np.log([[1.0, 3.0], [1.0, 1.0]])
    np.testing.assert_allclose(probabilities_at_temperature(logits), [[0.25, 0.75], [0.5, 0.5]])
    # T = 1/2 squares the odds: 1:3 -> 1:9
    np.testing.assert_allclose(probabilities_at_temperature(logits, 0.5), [[0.1, 0.9], [0.5, 0.5]])
    # T = 2 takes their square root: 1:3 -> 1:sqrt(3)
    s = math.sqrt(3)
    np.testing.assert_allclose(probabilities_at_temperature(logits, 2.0)[0], [1 / (1 + s), s / (1 + s)])


def test_probabilities_rows_sum_to_one_and_temperature_one_is_softmax():
    logits = np.random.default_rng(0).normal(0, 5, size=(50, 7)).astype(np.float32)
    for temperature in (0.1, 0.7, 1.0, 3.0, 20.0):
        p = probabilities_at_temperature(logits, temperature)
        assert p.dtype == np.float64
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probabilities_at_temperature(logits, 1.0), softmax(logits.astype(np.float64), axis=1))


def test_temperature_never_changes_the_predicted_class():
    logits = np.random.default_rng(1).normal(0, 2, size=(200, 5))
    expected = logits.argmax(axis=1)
    for temperature in (0.05, 0.5, 2.0, 20.0):
        np.testing.assert_array_equal(probabilities_at_temperature(logits, temperature).argmax(axis=1), expected)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match=f"temperature must be positive, not {temperature}"):
        probabilities_at_temperature(np.zeros((2, 3)), temperature)


def test_negative_log_likelihood_by_hand():
    # row 0: logits (0, 0) -> p = (1/2, 1/2), true 0 -> -log 1/2 = log 2
    # row 1: logits (log 3, 0) -> p = (3/4, 1/4), true 1 -> -log 1/4 = 2 log 2
    logits = np.array([[0.0, 0.0], [math.log(3), 0.0]])
    labels = np.array([0, 1])
    assert negative_log_likelihood(logits, labels) == pytest.approx(1.5 * math.log(2), rel=1e-12)
    # at T = 2 row 1 becomes (sqrt 3, 1) / (1 + sqrt 3): -log p_1 = log(1 + sqrt 3)
    expected_t2 = (math.log(2) + math.log(1 + math.sqrt(3))) / 2
    assert negative_log_likelihood(logits, labels, 2.0) == pytest.approx(expected_t2, rel=1e-12)


# --- temperature fitting -----------------------------------------------------------------------------


def test_fit_temperature_recovers_a_known_temperature():
    logits, labels = simulate(20000, temperature=2.5, seed=0)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, abs=0.1)


def test_fit_temperature_minimises_the_nll():
    logits, labels = simulate(2000, temperature=2.5, seed=1)
    fitted = fit_temperature(logits, labels)
    best = negative_log_likelihood(logits, labels, fitted)
    for factor in (0.9, 0.99, 1.01, 1.1):
        assert best < negative_log_likelihood(logits, labels, fitted * factor)


def test_over_confident_logits_get_a_temperature_above_one():
    logits, labels = simulate(5000, temperature=1.0, seed=2)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)  # calibrated as they are
    assert fit_temperature(4 * logits, labels) == pytest.approx(4.0, abs=0.4)  # scaled x4: divide by 4 again


def test_under_confident_logits_get_a_temperature_below_one():
    logits, labels = simulate(5000, temperature=1.0, seed=3)
    assert fit_temperature(logits / 4, labels) == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize(
    ("logits", "labels"),
    [
        (np.zeros(4), np.zeros(4, dtype=int)),  # 1-D logits
        (np.zeros((4, 3)), np.zeros(3, dtype=int)),  # one label short
        (np.zeros((0, 3)), np.zeros(0, dtype=int)),  # nothing to fit
    ],
)
def test_fit_temperature_refuses_bad_shapes(logits, labels):
    with pytest.raises(ValueError, match="need \\(n, k\\) logits and n labels"):
        fit_temperature(logits, labels)


# --- calibrate: temperature + referral threshold -----------------------------------------------------


@pytest.fixture(scope="module")
def over_confident():
    logits, labels = simulate(3000, temperature=1.0, seed=4)
    return 4 * logits, labels


def test_calibrate_fits_the_temperature_and_improves_nll_and_ece(over_confident):
    logits, labels = over_confident
    result = calibrate(logits, labels, CLASSES)
    assert isinstance(result, Calibration)
    assert result.temperature == fit_temperature(logits, labels)
    assert result.temperature > 1
    v = result.validation
    assert v["nll_before"] == pytest.approx(negative_log_likelihood(logits, labels))
    assert v["nll_after"] == pytest.approx(negative_log_likelihood(logits, labels, result.temperature))
    assert v["nll_after"] < v["nll_before"]
    assert v["ece_before"] == pytest.approx(metrics.expected_calibration_error(labels, softmax(logits, axis=1)))
    assert v["ece_after"] <= v["ece_before"]
    assert v["ece_after"] < 0.5 * v["ece_before"]  # x4 over-confidence is a large, fixable miscalibration


def test_calibrate_threshold_reaches_the_target_sensitivity_and_is_the_largest_that_does(over_confident):
    logits, labels = over_confident
    result = calibrate(logits, labels, CLASSES, target_sensitivity=0.9)
    assert result.target_sensitivity == 0.9
    score = metrics.malignancy_score(probabilities_at_temperature(logits, result.temperature), CLASSES)
    is_malignant = np.isin(labels, [CLASSES.index("mel"), CLASSES.index("bcc")])
    sensitivity, specificity = metrics.sensitivity_specificity_at_threshold(
        score, is_malignant, result.referral_threshold
    )
    assert sensitivity >= 0.9
    assert result.validation["referral_sensitivity"] == sensitivity
    assert result.validation["referral_specificity"] == specificity
    assert result.validation["n_images"] == len(labels)
    assert result.validation["n_malignant"] == int(is_malignant.sum())
    # the threshold is a malignant score, and referring any less (the next malignant score up) misses the target
    assert result.referral_threshold in score[is_malignant]
    next_up = score[is_malignant & (score > result.referral_threshold)].min()
    assert metrics.sensitivity_specificity_at_threshold(score, is_malignant, next_up)[0] < 0.9


def test_calibration_to_dict_holds_every_value(over_confident):
    logits, labels = over_confident
    result = calibrate(logits, labels, CLASSES)
    d = result.to_dict()
    assert d["temperature"] == result.temperature
    assert d["referral_threshold"] == result.referral_threshold
    assert d["target_sensitivity"] == 0.95
    assert set(d["validation"]) == {
        "n_images",
        "n_malignant",
        "nll_before",
        "nll_after",
        "ece_before",
        "ece_after",
        "referral_sensitivity",
        "referral_specificity",
    }


def test_calibrate_refuses_class_names_that_do_not_match_the_logits(over_confident):
    logits, labels = over_confident
    with pytest.raises(ValueError, match="do not have one column per class code"):
        calibrate(logits, labels, CLASSES[:4])


def test_calibrate_refuses_mismatched_labels(over_confident):
    logits, labels = over_confident
    with pytest.raises(ValueError, match="need \\(n, k\\) logits and n labels"):
        calibrate(logits, labels[:-1], CLASSES)


def test_calibrate_refuses_a_validation_set_without_malignant_lesions():
    logits = np.random.default_rng(5).normal(size=(20, len(CLASSES)))
    labels = np.full(20, CLASSES.index("nv"))
    with pytest.raises(ValueError, match="no malignant rows"):
        calibrate(logits, labels, CLASSES)


# --- per acquisition type ----------------------------------------------------------------------------


def two_acquisition_types(n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dermoscopic logits 4x over-confident and clinical ones 2x under-confident; every row's labels drawn at T = 1."""
    dermoscopic, d_labels = simulate(n, temperature=1.0, seed=10)
    clinical, c_labels = simulate(n, temperature=1.0, seed=11)
    logits = np.concatenate([4 * dermoscopic, clinical / 2])
    kinds = np.array(["dermoscopic"] * n + ["clinical"] * n, dtype=object)
    return logits, np.concatenate([d_labels, c_labels]), kinds


def pooled_calibration(logits: np.ndarray, labels: np.ndarray) -> dict:
    pooled = calibrate(logits, labels, CLASSES).to_dict()
    probabilities = probabilities_at_temperature(logits, pooled["temperature"])
    return {**pooled, "urgent": calibration.urgent_threshold(probabilities, labels, CLASSES)}


def test_two_types_with_different_logit_scales_get_their_own_temperatures_and_thresholds() -> None:
    logits, labels, kinds = two_acquisition_types()
    pooled = pooled_calibration(logits, labels)
    fitted = calibration.calibrate_by_acquisition(logits, labels, kinds, CLASSES, pooled=pooled)

    assert set(fitted) == {"dermoscopic", "clinical"}
    dermoscopic, clinical = fitted["dermoscopic"], fitted["clinical"]
    assert dermoscopic.temperature == pytest.approx(4.0, abs=0.4)  # undoes the x4
    assert clinical.temperature == pytest.approx(0.5, abs=0.06)  # undoes the /2
    assert clinical.temperature < pooled["temperature"] < dermoscopic.temperature  # one T cannot serve both
    for kind, entry in fitted.items():
        rows = kinds == kind
        assert entry.fallback is None
        assert entry.temperature == fit_temperature(logits[rows], labels[rows])
        assert entry.validation["n_images"] == rows.sum()
        score = metrics.malignancy_score(probabilities_at_temperature(logits[rows], entry.temperature), CLASSES)
        malignant = np.isin(labels[rows], [CLASSES.index("mel"), CLASSES.index("bcc")])
        sensitivity, _ = metrics.sensitivity_specificity_at_threshold(score, malignant, entry.referral_threshold)
        assert sensitivity >= 0.95 and entry.validation["referral_sensitivity"] == sensitivity
        _, specificity = metrics.sensitivity_specificity_at_threshold(score, malignant, entry.urgent["threshold"])
        assert specificity >= 0.95 and entry.urgent["validation_specificity"] == specificity
        assert entry.referral_threshold <= entry.urgent["threshold"]


def test_the_record_round_trips_and_has_the_pooled_fields_plus_fallback() -> None:
    logits, labels, kinds = two_acquisition_types(600)
    fitted = calibration.calibrate_by_acquisition(
        logits, labels, kinds, CLASSES, pooled=pooled_calibration(logits, labels)
    )
    data = fitted["clinical"].to_dict()
    assert set(data) == {"temperature", "referral_threshold", "target_sensitivity", "validation", "urgent", "fallback"}
    assert set(data["urgent"]) == {
        "threshold",
        "target_specificity",
        "validation_sensitivity",
        "validation_specificity",
    }
    assert calibration.AcquisitionCalibration.from_dict(data, kind="clinical") == fitted["clinical"]
    by_acquisition = {kind: entry.to_dict() for kind, entry in fitted.items()}
    assert calibration.acquisition_calibrations({"by_acquisition": by_acquisition}) == fitted
    assert calibration.acquisition_calibrations({"temperature": 1.0}) == {}  # a bundle calibrated before them
    with pytest.raises(ValueError, match=r"calibration by_acquisition\.clinical lacks referral_threshold"):
        calibration.acquisition_calibrations({"by_acquisition": {"clinical": {"temperature": 2.0}}})


@pytest.mark.parametrize(
    ("n_malignant", "n_benign", "reason"),
    [
        (6, 13, "only 19 clinical validation images (at least 20 needed)"),
        (4, 30, "only 4 malignant clinical validation images (at least 5 needed)"),
        (30, 4, "only 4 benign clinical validation images (at least 5 needed)"),
    ],
)
def test_a_type_too_small_to_fit_keeps_the_pooled_values_and_says_why(n_malignant, n_benign, reason) -> None:
    logits, labels, kinds = two_acquisition_types(500)
    dermoscopic = kinds == "dermoscopic"
    mel, nv = CLASSES.index("mel"), CLASSES.index("nv")
    rng = np.random.default_rng(12)
    small = rng.normal(0.0, 3.0, size=(n_malignant + n_benign, len(CLASSES)))
    small_labels = np.array([mel] * n_malignant + [nv] * n_benign)
    logits = np.concatenate([logits[dermoscopic], small])
    labels = np.concatenate([labels[dermoscopic], small_labels])
    kinds = np.array(["dermoscopic"] * dermoscopic.sum() + ["clinical"] * len(small), dtype=object)
    pooled = pooled_calibration(logits, labels)

    fitted = calibration.calibrate_by_acquisition(logits, labels, kinds, CLASSES, pooled=pooled)

    clinical = fitted["clinical"]
    assert clinical.fallback == f"pooled: {reason}"
    assert (clinical.temperature, clinical.referral_threshold) == (pooled["temperature"], pooled["referral_threshold"])
    assert clinical.urgent == pooled["urgent"] and clinical.validation == pooled["validation"]
    assert fitted["dermoscopic"].fallback is None  # the other type is fitted as usual


def test_rows_without_a_recorded_type_count_for_neither() -> None:
    logits, labels, _ = two_acquisition_types(100)
    kinds = np.array([None] * len(labels), dtype=object)
    fitted = calibration.calibrate_by_acquisition(
        logits, labels, kinds, CLASSES, pooled=pooled_calibration(logits, labels)
    )
    assert fitted["dermoscopic"].fallback == "pooled: only 0 dermoscopic validation images (at least 20 needed)"
    assert fitted["clinical"].fallback == "pooled: only 0 clinical validation images (at least 20 needed)"


def test_well_separated_scores_raise_the_urgent_threshold_to_the_referral_one() -> None:
    # 20 melanomas scored ~0.98 malignant, 20 naevi ~0.02: the 95%-specificity cut-off lies below the
    # 95%-sensitivity one, and an urgent referral must still be a referral
    mel, nv = CLASSES.index("mel"), CLASSES.index("nv")
    rng = np.random.default_rng(13)
    logits = np.zeros((40, len(CLASSES)))
    logits[:20, mel] = 6.0 + rng.normal(0, 0.3, 20)
    logits[20:, nv] = 6.0 + rng.normal(0, 0.3, 20)
    labels = np.array([mel] * 20 + [nv] * 20)
    entry = calibration.calibrate_acquisition(logits, labels, CLASSES)
    assert entry.urgent["threshold"] == entry.referral_threshold
    assert entry.urgent["validation_specificity"] == entry.validation["referral_specificity"] == 1.0


def test_a_type_whose_scores_give_no_usable_threshold_falls_back() -> None:
    mel, nv = CLASSES.index("mel"), CLASSES.index("nv")
    logits = np.zeros((40, len(CLASSES)))  # every image scores the same: no threshold reaches 95% specificity
    labels = np.array([mel] * 20 + [nv] * 20)
    kinds = np.array(["clinical"] * 40, dtype=object)
    pooled = {"temperature": 1.0, "referral_threshold": 0.3, "urgent": {"threshold": 0.7}}
    fitted = calibration.calibrate_by_acquisition(logits, labels, kinds, CLASSES, pooled=pooled)
    assert fitted["clinical"].fallback.startswith("pooled: the clinical validation scores gave no usable thresholds")
    assert fitted["clinical"].referral_threshold == 0.3


def test_probabilities_at_temperatures_scale_each_row_by_its_own() -> None:
    logits = np.random.default_rng(14).normal(0, 2, size=(4, 3))
    temperatures = [0.5, 1.0, 2.0, 1.0]
    expected = np.vstack(
        [probabilities_at_temperature(row[None], t) for row, t in zip(logits, temperatures, strict=True)]
    )
    np.testing.assert_array_equal(calibration.probabilities_at_temperatures(logits, temperatures), expected)
    with pytest.raises(ValueError, match="need one temperature per row"):
        calibration.probabilities_at_temperatures(logits, [1.0, 1.0])
    with pytest.raises(ValueError, match="temperatures must be positive"):
        calibration.probabilities_at_temperatures(logits, [1.0, 0.0, 1.0, 1.0])


def test_each_row_takes_its_acquisition_types_temperature_and_unknown_types_the_pooled_one() -> None:
    by_type = {"dermoscopic": SimpleNamespace(temperature=0.7), "clinical": SimpleNamespace(temperature=1.3)}
    kinds = ["clinical", None, "dermoscopic", "unheard-of"]
    assert temperatures_by_acquisition(kinds, by_type, 0.9) == [1.3, 0.9, 0.7, 0.9]
