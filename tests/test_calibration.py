"""Calibration: hand-worked softmax and NLL, temperature recovery on simulated data, and the referral threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax

from skintriage import calibration, metrics
from skintriage.calibration import (
    Calibration,
    calibrate,
    fit_temperature,
    negative_log_likelihood,
    probabilities_at_temperature,
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


def test_effective_training_prior_follows_the_sampling_power() -> None:
    # n = (100, 25): power 0.5 draws in proportion sqrt(n) = (10, 5); power 1 balances; power 0 keeps the counts.
    np.testing.assert_allclose(calibration.effective_training_prior([100, 25], 0.5), [2 / 3, 1 / 3])
    np.testing.assert_allclose(calibration.effective_training_prior([100, 25], 1.0), [0.5, 0.5])
    np.testing.assert_allclose(calibration.effective_training_prior([100, 25], 0.0), [0.8, 0.2])
    with pytest.raises(ValueError, match="training images"):
        calibration.effective_training_prior([100, 0], 0.5)


def test_class_balanced_probabilities_divide_by_the_prior_and_can_change_the_call() -> None:
    # (0.6, 0.4) / (2/3, 1/3) = (0.9, 1.2) -> (0.9, 1.2) / 2.1: the rarer class wins.
    balanced = calibration.class_balanced_probabilities(np.array([[0.6, 0.4], [0.9, 0.1]]), [2 / 3, 1 / 3])
    np.testing.assert_allclose(balanced, [[0.9 / 2.1, 1.2 / 2.1], [1.35 / 1.65, 0.3 / 1.65]])
    assert balanced.argmax(axis=1).tolist() == [1, 0]
