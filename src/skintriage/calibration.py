"""Post-hoc calibration on the validation split: temperature scaling and the referral threshold.

* **Temperature scaling** (Guo et al. 2017) divides every logit by one scalar ``T`` fitted to
  minimise the validation negative log-likelihood. It changes how confident the probabilities are,
  never which class ranks first, so accuracy and AUCs are untouched and ECE usually drops. One
  parameter cannot overfit a validation set of a few hundred images the way per-class (vector or
  matrix) scaling can.
* **Referral threshold.** The malignancy score (summed probability of the malignant classes, after
  temperature scaling) is thresholded; the threshold is the largest one that still refers at least
  ``target_sensitivity`` (default 0.95) of the malignant *validation* lesions. The test sets are
  never used to choose either value.

* **Class-balanced decisions.** Training corrects the imbalance only partly (a sampler or loss weights
  with power 0.5), so the calibrated probabilities still favour common classes, as they should for a
  case mix like training's. The ISIC headline metric, balanced accuracy, instead weighs every class
  equally; the Bayes decision for it divides each probability by the class's share in training
  (the effective prior ``n_c ** (1 - power)``) and takes the largest (post-hoc logit adjustment,
  Menon et al. 2021). :func:`class_balanced_probabilities` does that; whether the bundle's class
  call uses it is decided on validation balanced accuracy. Probabilities, AUCs, ECE and the
  referral score are unaffected.

* **Urgent threshold.** A second, higher cut-off on the same score: the smallest threshold whose
  validation specificity is at least ``target_specificity`` (default 0.95). Above it the image evidence
  alone makes the referral urgent; between the two thresholds it is a routine referral.

The threshold is a validation estimate: on new data the achieved sensitivity varies around the target
(report it with a confidence interval), and on lesions unlike any in training (Merkel cell carcinoma,
cutaneous metastases) it is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from skintriage import metrics

LOG_TEMPERATURE_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: far outside this the model is broken, not miscalibrated


@dataclass(frozen=True)
class Calibration:
    temperature: float
    referral_threshold: float
    target_sensitivity: float
    validation: dict[str, float]  # NLL/ECE before and after, sensitivity/specificity at the threshold, counts

    def to_dict(self) -> dict:
        return asdict(self)


def probabilities_at_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` (float64, rows sum to 1)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def effective_training_prior(class_counts: np.ndarray | Sequence[int], power: float) -> np.ndarray:
    """Class shares the model saw in training when images of class c were drawn (or weighted) ``n_c ** -power``."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if (counts <= 0).any():
        raise ValueError(f"every class needs training images to have a prior; counts were {counts.tolist()}")
    prior = counts ** (1.0 - power)
    return prior / prior.sum()


def class_balanced_probabilities(probabilities: np.ndarray, prior: np.ndarray | Sequence[float]) -> np.ndarray:
    """Posteriors as if every class were equally common: ``p_c / prior_c``, renormalised per row."""
    adjusted = np.asarray(probabilities, dtype=np.float64) / np.asarray(prior, dtype=np.float64)
    return adjusted / adjusted.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray | Sequence[int]) -> float:
    """The ``T`` minimising validation NLL (a 1-D bounded search over log T; NLL is convex in 1/T)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (n, k) logits and n labels, got {logits.shape} and {labels.shape}")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=LOG_TEMPERATURE_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def calibrate(
    logits: np.ndarray,
    labels: np.ndarray | Sequence[int],
    class_names: Sequence[str],
    *,
    target_sensitivity: float = 0.95,
) -> Calibration:
    """Fit the temperature and the referral threshold on validation logits and labels."""
    labels = np.asarray(labels)
    temperature = fit_temperature(logits, labels)
    before = probabilities_at_temperature(logits, 1.0)
    after = probabilities_at_temperature(logits, temperature)
    score = metrics.malignancy_score(after, class_names)
    is_malignant = metrics.malignant_columns(class_names)[labels]
    threshold = metrics.referral_threshold_for_sensitivity(score, is_malignant, target_sensitivity)
    sensitivity, specificity = metrics.sensitivity_specificity_at_threshold(score, is_malignant, threshold)
    validation = {
        "n_images": len(labels),
        "n_malignant": int(is_malignant.sum()),
        "nll_before": negative_log_likelihood(logits, labels, 1.0),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
        "ece_before": metrics.expected_calibration_error(labels, before),
        "ece_after": metrics.expected_calibration_error(labels, after),
        "referral_sensitivity": float(sensitivity),
        "referral_specificity": float(specificity),
    }
    return Calibration(temperature, threshold, target_sensitivity, validation)


def urgent_threshold(
    probabilities: np.ndarray,
    labels: np.ndarray | Sequence[int],
    class_names: Sequence[str],
    *,
    target_specificity: float = 0.95,
) -> dict[str, float]:
    """The urgent cut-off on the malignancy score (calibrated validation probabilities) and how it performed."""
    score = metrics.malignancy_score(probabilities, class_names)
    is_malignant = metrics.malignant_columns(class_names)[np.asarray(labels)]
    threshold = metrics.referral_threshold_for_specificity(score, is_malignant, target_specificity)
    sensitivity, specificity = metrics.sensitivity_specificity_at_threshold(score, is_malignant, threshold)
    return {
        "threshold": threshold,
        "target_specificity": target_specificity,
        "validation_sensitivity": float(sensitivity),
        "validation_specificity": float(specificity),
    }
