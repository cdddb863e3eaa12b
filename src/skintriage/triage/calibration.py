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
  Menon et al. 2021). :func:`skintriage.metrics.decision_probabilities` does that; whether the bundle's class
  call uses it is decided on validation balanced accuracy. Probabilities, AUCs, ECE and the
  referral score are unaffected.

* **Urgent threshold.** A second, higher cut-off on the same score: the smallest threshold whose
  validation specificity is at least ``target_specificity`` (default 0.95). Above it the image evidence
  alone makes the referral urgent; between the two thresholds it is a routine referral.

* **Per acquisition type.** Dermoscopic images and clinical (camera) photographs score differently: one
  temperature and threshold fitted on a validation set that is mostly dermoscopic refers most benign
  clinical photos. :func:`calibrate_by_acquisition` fits the temperature, the referral threshold and the
  urgent threshold again on each type's own validation images (``calibration.by_acquisition`` in
  ``model.json``); a type with too few images to fit (fewer than ``MIN_ACQUISITION_IMAGES``, or fewer
  than ``MIN_ACQUISITION_PER_CLASS`` malignant or benign ones) keeps the pooled values and says so
  (``fallback``). The pooled fit stays as it was: bundles without the per-type part behave as before.

The threshold is a validation estimate: on new data the achieved sensitivity varies around the target
(report it with a confidence interval), and on lesions unlike any in training (Merkel cell carcinoma,
cutaneous metastases) it is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from skintriage import metrics
from skintriage.common.errors import BundleError
from skintriage.data.records import ACQUISITIONS

LOG_TEMPERATURE_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: far outside this the model is broken, not miscalibrated
# Below these a type's own temperature and thresholds would be fitted on noise: its pooled values are kept.
MIN_ACQUISITION_IMAGES = 20
MIN_ACQUISITION_PER_CLASS = 5  # malignant and benign validation images, each


@dataclass(frozen=True)
class Calibration:
    temperature: float
    referral_threshold: float
    target_sensitivity: float
    validation: dict[str, float]  # NLL/ECE before and after, sensitivity/specificity at the threshold, counts

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AcquisitionCalibration:
    """One acquisition type's temperature, referral and urgent thresholds (``calibration.by_acquisition.<type>``).

    The same fields as the pooled calibration, fitted on that type's validation images only; or, with
    ``fallback`` set ("pooled: <reason>"), the pooled values, because the type had too few images to fit.
    """

    temperature: float
    referral_threshold: float
    target_sensitivity: float
    validation: dict[str, float]  # as the pooled one's, on this type's images (the pooled numbers on a fallback)
    urgent: dict[str, float]  # as ``calibration.urgent``: threshold, target and validation sensitivity/specificity
    fallback: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, *, kind: str) -> AcquisitionCalibration:
        """Read one entry of ``model.json`` (or the pooled ``calibration`` itself); ``kind`` names it in errors."""
        urgent = data.get("urgent") if isinstance(data, Mapping) else None
        if not isinstance(urgent, Mapping) or "threshold" not in urgent or "referral_threshold" not in data:
            raise BundleError(
                f"calibration {kind} lacks referral_threshold or urgent.threshold; run `skintriage fit-gates "
                "--checkpoint DIR`"
            )
        return cls(
            temperature=float(data.get("temperature", 1.0)),  # what Bundle.temperature defaults to
            referral_threshold=float(data["referral_threshold"]),
            target_sensitivity=float(data.get("target_sensitivity", 0.95)),
            validation=dict(data.get("validation") or {}),
            urgent=dict(urgent),
            fallback=data.get("fallback"),
        )

    @classmethod
    def pooled(cls, calibration: Mapping, *, reason: str) -> AcquisitionCalibration:
        """The pooled values standing in for a type that could not be fitted, with the reason recorded."""
        return replace(cls.from_dict(calibration, kind="(pooled)"), fallback=f"pooled: {reason}")


def acquisition_calibrations(calibration: Mapping | None) -> dict[str, AcquisitionCalibration]:
    """``calibration.by_acquisition`` of a bundle as records; empty for a bundle calibrated before it existed."""
    entries = (calibration or {}).get("by_acquisition") or {}
    return {
        kind: AcquisitionCalibration.from_dict(entry, kind=f"by_acquisition.{kind}") for kind, entry in entries.items()
    }


def probabilities_at_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` (float64, rows sum to 1)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def probabilities_at_temperatures(logits: np.ndarray, temperatures: np.ndarray | Sequence[float]) -> np.ndarray:
    """Softmax of each row divided by its own temperature (one per image: its acquisition type's)."""
    temperatures = np.asarray(temperatures, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    if temperatures.shape != (len(logits),):
        raise ValueError(f"need one temperature per row: {temperatures.shape} for {len(logits)} rows")
    if not (temperatures > 0).all():
        raise ValueError(f"temperatures must be positive, not {temperatures[temperatures <= 0][:3].tolist()}")
    return softmax(logits / temperatures[:, None], axis=1)


def temperatures_by_acquisition(
    kinds: Sequence[str | None], by_acquisition: Mapping[str, object], pooled: float
) -> list[float]:
    """Each row's temperature: its acquisition type's (any record with a ``temperature``), the pooled one otherwise.

    Validation entropies and predictions are taken at the same per-type temperatures, so a gate fitted on
    the first holds for the second.
    """
    return [by_acquisition[k].temperature if k in by_acquisition else pooled for k in kinds]


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


def acquisition_fit_problem(
    labels: np.ndarray,
    class_names: Sequence[str],
    kind: str,
    *,
    min_images: int = MIN_ACQUISITION_IMAGES,
    min_per_class: int = MIN_ACQUISITION_PER_CLASS,
) -> str | None:
    """Why ``kind``'s validation images cannot carry their own fit (``None``: they can)."""
    malignant = int(metrics.malignant_columns(class_names)[np.asarray(labels, dtype=int)].sum())
    for n, what, needed in (
        (len(labels), "", min_images),
        (malignant, "malignant ", min_per_class),
        (len(labels) - malignant, "benign ", min_per_class),
    ):
        if n < needed:
            return f"only {n} {what}{kind} validation images (at least {needed} needed)"
    return None


def calibrate_acquisition(
    logits: np.ndarray,
    labels: np.ndarray | Sequence[int],
    class_names: Sequence[str],
    *,
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.95,
) -> AcquisitionCalibration:
    """Temperature, referral and urgent thresholds fitted on one acquisition type's validation images.

    Where the images separate so well that the 95%-specificity cut-off lies below the 95%-sensitivity
    one, the urgent threshold is raised to the referral threshold (an urgent referral is a referral):
    its specificity can only rise, so its target still holds.
    """
    labels = np.asarray(labels)
    fitted = calibrate(logits, labels, class_names, target_sensitivity=target_sensitivity)
    probabilities = probabilities_at_temperature(logits, fitted.temperature)
    urgent = urgent_threshold(probabilities, labels, class_names, target_specificity=target_specificity)
    if urgent["threshold"] < fitted.referral_threshold:
        urgent = {
            **urgent,
            "threshold": fitted.referral_threshold,
            "validation_sensitivity": fitted.validation["referral_sensitivity"],
            "validation_specificity": fitted.validation["referral_specificity"],
        }
    return AcquisitionCalibration(
        fitted.temperature, fitted.referral_threshold, fitted.target_sensitivity, fitted.validation, urgent
    )


def calibrate_by_acquisition(
    logits: np.ndarray,
    labels: np.ndarray | Sequence[int],
    acquisition: np.ndarray | Sequence[str | None],
    class_names: Sequence[str],
    *,
    pooled: Mapping,
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.95,
    min_images: int = MIN_ACQUISITION_IMAGES,
    min_per_class: int = MIN_ACQUISITION_PER_CLASS,
) -> dict[str, AcquisitionCalibration]:
    """One :class:`AcquisitionCalibration` per acquisition type, fitted on its validation rows.

    ``acquisition`` gives each row's type (the manifest column; rows of no recorded type count for
    none); ``pooled`` is the pooled ``calibration`` (with ``urgent``), which a type too small to fit keeps.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    acquisition = np.asarray(acquisition, dtype=object)
    if not len(logits) == len(labels) == len(acquisition):
        raise ValueError(f"need one label and acquisition per row: {len(logits)}, {len(labels)}, {len(acquisition)}")
    out = {}
    for kind in ACQUISITIONS:
        rows = acquisition == kind
        problem = acquisition_fit_problem(
            labels[rows], class_names, kind, min_images=min_images, min_per_class=min_per_class
        )
        fitted = None
        if problem is None:
            fitted = calibrate_acquisition(
                logits[rows],
                labels[rows],
                class_names,
                target_sensitivity=target_sensitivity,
                target_specificity=target_specificity,
            )
            problem = unusable_thresholds(fitted, kind)
        out[kind] = AcquisitionCalibration.pooled(pooled, reason=problem) if problem else fitted
    return out


def unusable_thresholds(fitted: AcquisitionCalibration, kind: str) -> str | None:
    """Why a type's fitted thresholds cannot serve as a referral policy (``None``: they can).

    Scores that do not separate the classes can leave no threshold reaching the target specificity
    (the urgent cut-off is then infinite); such a type keeps the pooled values instead.
    """
    referral, urgent = fitted.referral_threshold, float(fitted.urgent["threshold"])
    if 0.0 < referral <= urgent <= 1.0:
        return None
    return f"the {kind} validation scores gave no usable thresholds (referral {referral:.3g}, urgent {urgent:.3g})"
