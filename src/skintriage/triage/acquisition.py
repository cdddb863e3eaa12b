"""Which kind of photograph the model was given, and which calibration that selects.

The bundle holds a temperature and thresholds per acquisition type (``calibration.by_acquisition``,
see :mod:`skintriage.triage.calibration`): a dermoscopic image and a clinical (camera) photo of the same
lesion score differently, so one threshold cannot serve both. The user may say which it is; when
they do not ("auto"), a small classifier on the embedding the uncertainty gate reads says it:

* **The classifier**: the embedding is standardised (training mean and standard deviation) and a
  logistic regression (L2, scikit-learn's default strength) gives the probability of one type; at 0.5
  or above it is that type. Classes are weighted inversely to their training counts so that the 0.5
  cut-off does not favour the dermoscopic majority. It is fitted on the *training* split's embeddings
  and acquisition labels; its accuracy is measured on validation and on every evaluated set.
* **At prediction** it is four tensors (mean, scale, coefficients, intercept) and a sigmoid in torch:
  scikit-learn is needed to fit it, never to use it.

What it cannot do: in the public data the acquisition type is confounded with the source (HAM10000
is dermoscopic, DermNet clinical), so the classifier may partly recognise the source rather than the
optics, and a phone photo through a dermatoscope is neither. A wrong type only changes which
validated thresholds apply; every prediction says which were used, chosen by whom, and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from skintriage.common.errors import ArgumentError, BundleError
from skintriage.data.records import ACQUISITIONS
from skintriage.triage.calibration import AcquisitionCalibration

if TYPE_CHECKING:
    from skintriage.model.bundle import Bundle

METHOD = "standardised embedding + logistic regression (L2, class-balanced), probability threshold 0.5"
THRESHOLD = 0.5
MIN_TRAINING_PER_TYPE = 10  # training images of each type below which no classifier is fitted
AUTO = "auto"
REQUESTS = (AUTO, *ACQUISITIONS)  # what a caller may ask for: the model's reading, or a type they know
AcquisitionRequest = Literal["auto", "dermoscopic", "clinical"]
ChosenBy = Literal["user", "model", "pooled"]
# How the texts name each type: "the clinical-photo threshold", "used for clinical photos"
NAMES = {"dermoscopic": "dermoscopic image", "clinical": "clinical photo"}


def check_request(acquisition: str) -> str:
    """``acquisition`` if it is one of ``auto``, ``dermoscopic``, ``clinical``; an ArgumentError naming it otherwise."""
    if acquisition not in REQUESTS:
        raise ArgumentError(f"acquisition must be one of {', '.join(REQUESTS)}, not {acquisition!r}")
    return acquisition


@dataclass(frozen=True)
class AcquisitionClassifier:
    """Dermoscopic or clinical, from the head-input embedding (see the module docstring)."""

    classes: tuple[str, str]  # (negative, positive): the logistic regression gives P(classes[1])
    mean: np.ndarray  # (D,) training mean of the embedding
    scale: np.ndarray  # (D,) training standard deviation (1 where it is 0)
    coef: np.ndarray  # (D,) coefficients on the standardised embedding
    intercept: float

    def positive_probability(self, embeddings: np.ndarray) -> np.ndarray:
        """P(``classes[1]``) per row of an (N, D) array (or one (D,) embedding), in float64.

        In torch, not numpy: numpy's BLAS threads linger and slow the next forward pass on a small
        machine (see :func:`skintriage.triage.uncertainty.mahalanobis_to_nearest_mean`).
        """
        x = torch.as_tensor(np.atleast_2d(np.asarray(embeddings, dtype=np.float64)))
        if x.shape[1] != len(self.mean):
            raise ValueError(
                f"embedding has {x.shape[1]} dimensions; the acquisition classifier needs {len(self.mean)}"
            )
        z = (x - torch.from_numpy(self.mean)) / torch.from_numpy(self.scale)
        return torch.sigmoid(z @ torch.from_numpy(self.coef) + self.intercept).numpy()

    def predict_many(self, embeddings: np.ndarray) -> list[tuple[str, float]]:
        """(type, probability of that type) per row; a row at exactly 0.5 is ``classes[1]``."""
        negative, positive = self.classes
        return [
            (positive, float(p)) if p >= THRESHOLD else (negative, float(1.0 - p))
            for p in self.positive_probability(embeddings)
        ]

    def predict(self, embedding: np.ndarray) -> tuple[str, float]:
        """(type, probability of that type) for one (D,) embedding."""
        embedding = np.asarray(embedding)
        if embedding.ndim != 1:
            raise ValueError(f"predict takes one (D,) embedding, not shape {embedding.shape}; use predict_many")
        return self.predict_many(embedding[None])[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the bundle stores in its acquisition file (float64: 4 x D numbers, exactly what was fitted)."""
        return {
            "mean": torch.from_numpy(self.mean.astype(np.float64)),
            "scale": torch.from_numpy(self.scale.astype(np.float64)),
            "coef": torch.from_numpy(self.coef.astype(np.float64)),
            "intercept": torch.tensor([self.intercept], dtype=torch.float64),
        }

    def summary(self) -> dict:
        """What ``model.json`` records about it (the numbers are in the tensors)."""
        return {"method": METHOD, "classes": list(self.classes), "threshold": THRESHOLD}

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> AcquisitionClassifier | None:
        """The bundle's classifier; ``None`` for a bundle fitted before it existed (or without two types to learn)."""
        if bundle.acquisition_tensors is None:
            return None
        return cls.from_bundle_parts(bundle.acquisition_tensors, bundle.metadata.acquisition_classifier.to_json_dict())

    @classmethod
    def from_bundle_parts(cls, tensors: Mapping[str, torch.Tensor], summary: Mapping) -> AcquisitionClassifier:
        missing = [key for key in ("mean", "scale", "coef", "intercept") if key not in tensors]
        classes = tuple(summary.get("classes") or ())
        if missing or len(classes) != 2:
            raise BundleError(
                f"acquisition classifier: tensors lack {missing} or acquisition_classifier.classes is not two "
                f"types ({list(classes)})"
            )
        return cls(
            classes=classes,
            mean=tensors["mean"].double().numpy(),
            scale=tensors["scale"].double().numpy(),
            coef=tensors["coef"].double().numpy(),
            intercept=float(tensors["intercept"].double().reshape(-1)[0]),
        )


def training_problem(kinds: Sequence[str], *, min_per_type: int = MIN_TRAINING_PER_TYPE) -> str | None:
    """Why these training types cannot teach the classifier (``None``: they can): it needs both, each often enough."""
    kinds = list(kinds)
    counts = {kind: kinds.count(kind) for kind in ACQUISITIONS}
    few = [f"{n} {kind}" for kind, n in counts.items() if n < min_per_type]
    return f"only {' and '.join(few)} training images (at least {min_per_type} of each needed)" if few else None


def fit_acquisition_classifier(embeddings: np.ndarray, kinds: Sequence[str]) -> AcquisitionClassifier:
    """Standardise + class-balanced logistic regression on training embeddings and their acquisition types."""
    from sklearn.linear_model import LogisticRegression  # fitting only: prediction needs no scikit-learn
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(embeddings, dtype=np.float64)
    kinds = np.asarray(kinds, dtype=object)
    classes = sorted(set(kinds.tolist()))
    if len(classes) != 2 or x.ndim != 2 or len(x) != len(kinds):
        raise ValueError(
            f"the acquisition classifier needs (n, D) embeddings with n labels of two types; got {x.shape} "
            f"embeddings and {len(kinds)} labels of types {classes}"
        )
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(class_weight="balanced", max_iter=5000).fit(scaler.transform(x), kinds)
    return AcquisitionClassifier(
        classes=(str(model.classes_[0]), str(model.classes_[1])),
        mean=scaler.mean_.astype(np.float64),
        scale=scaler.scale_.astype(np.float64),
        coef=model.coef_[0].astype(np.float64),
        intercept=float(model.intercept_[0]),
    )


@dataclass(frozen=True)
class AcquisitionAccuracy:
    """How often the classifier names the recorded acquisition type, overall and per type."""

    n_images: int  # rows with a recorded type (the others cannot be scored)
    accuracy: float | None  # None: no row had a recorded type
    by_acquisition: dict[str, dict]  # type -> {"n_images", "accuracy"} (accuracy = that type's recall)
    n_not_recorded: int

    def to_dict(self) -> dict:
        return asdict(self)


def acquisition_accuracy(
    classifier: AcquisitionClassifier, embeddings: np.ndarray, kinds: Sequence[str | None]
) -> AcquisitionAccuracy:
    """The classifier scored against recorded types (the manifest's ``acquisition`` column)."""
    kinds = np.asarray([k if k in ACQUISITIONS else None for k in kinds], dtype=object)
    recorded = np.array([kind is not None for kind in kinds], dtype=bool)
    predicted = np.asarray(
        [kind for kind, _ in classifier.predict_many(embeddings)] if len(kinds) else [], dtype=object
    )
    right = predicted == kinds

    def share(mask: np.ndarray) -> float | None:
        return float(right[mask].mean()) if mask.any() else None

    return AcquisitionAccuracy(
        n_images=int(recorded.sum()),
        accuracy=share(recorded),
        by_acquisition={
            kind: {"n_images": int((kinds == kind).sum()), "accuracy": share(kinds == kind)} for kind in ACQUISITIONS
        },
        n_not_recorded=int((~recorded).sum()),
    )


@dataclass(frozen=True)
class AcquisitionUsed:
    """Which acquisition type one prediction took the image to be, and the calibration that selected.

    ``calibration`` names the ``model.json`` entry applied: a type (``calibration.by_acquisition.<type>``,
    which may itself be the pooled values when that type was too small to fit: ``why`` says so) or
    "pooled" (the top-level ``calibration``).
    """

    kind: str | None  # as given or read by the classifier; None when neither could say
    chosen_by: ChosenBy  # "user", "model" (the classifier), or "pooled" (nobody: no classifier in the bundle)
    probability: float | None  # the classifier's probability that the image is ``kind``; None without one
    calibration: str
    temperature: float
    referral_threshold: float
    urgent_threshold: float
    why: str

    def to_dict(self) -> dict:
        return asdict(self)


def choose_acquisition(
    requested: str,
    predicted: tuple[str, float] | None,
    calibrations: Mapping[str, AcquisitionCalibration],
    pooled: AcquisitionCalibration,
) -> AcquisitionUsed:
    """The type and calibration for one image: the user's type if given, else the classifier's, else pooled.

    ``predicted`` is the classifier's (type, probability) for the image, ``None`` without a classifier;
    ``calibrations`` the bundle's per-type entries (empty for a bundle that predates them).
    """
    check_request(requested)
    if requested != AUTO:
        kind, chosen_by = requested, "user"
        probability = None if predicted is None else predicted[1] if predicted[0] == kind else 1.0 - predicted[1]
        said = f"you said it is a {NAMES[kind]}"
        if probability is not None and probability < THRESHOLD:
            said += f" (the model reads it as a {NAMES[predicted[0]]}, probability {predicted[1]:.2f})"
    elif predicted is not None:
        (kind, probability), chosen_by = predicted, "model"
        said = f"the model reads it as a {NAMES[kind]} (probability {probability:.2f})"
    else:
        return _used(
            None, "pooled", None, "pooled", pooled,
            "this model bundle cannot tell dermoscopic from clinical photos (it has no acquisition classifier) and "
            "none was given, so the pooled calibration of all validation images is used",
        )  # fmt: skip
    entry = calibrations.get(kind)
    if entry is None:
        why = f"{said}; this model bundle has no per-acquisition calibration, so the pooled one is used"
        return _used(kind, chosen_by, probability, "pooled", pooled, why)
    if entry.fallback:
        why = f"{said}; its temperature and thresholds are the pooled ones ({entry.fallback})"
    else:
        why = f"{said}; the temperature and thresholds fitted on {kind} validation images are used"
    return _used(kind, chosen_by, probability, kind, entry, why)


def _used(
    kind: str | None,
    chosen_by: ChosenBy,
    probability: float | None,
    calibration: str,
    values: AcquisitionCalibration,
    why: str,
) -> AcquisitionUsed:
    return AcquisitionUsed(
        kind=kind,
        chosen_by=chosen_by,
        probability=None if probability is None else float(probability),
        calibration=calibration,
        temperature=values.temperature,
        referral_threshold=values.referral_threshold,
        urgent_threshold=float(values.urgent["threshold"]),
        why=why,
    )
