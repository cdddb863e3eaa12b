"""The uncertainty gate: when the model's answer should not be trusted at all.

A classifier returns confident-looking probabilities for anything, a photo of a cat included. The
referral engine therefore needs a separate signal that says "this image is not one the model can
assess", and refers such images with that reason instead of calling them benign. Two checks, each
with a threshold fitted on the validation split (so that a known share of ordinary validation
images trips it), never on test data:

* **Out of distribution** (Lee et al. 2018, "A simple unified framework for detecting
  out-of-distribution samples"): the embedding the classification head reads is modelled as one
  Gaussian per class with a shared covariance, fitted on the *training* images (Ledoit-Wolf
  shrinkage, because 512 dimensions from a few thousand images give a singular sample covariance).
  The score is the Mahalanobis distance to the nearest class mean; an image farther than the
  ``ood_quantile`` (default 0.99) of validation distances is out of distribution.
* **Low confidence**: the normalised entropy of the calibrated probabilities (0 = one class is
  certain, 1 = all classes equally likely); above the validation ``low_confidence_quantile``
  (default 0.95) the prediction is too uncertain to act on.

Both are reported together as one number, ``score = max(distance / ood_threshold, entropy /
entropy_threshold)``: at or below 1 the image passes both checks, above 1 the gate fires.

What it cannot do: an image that resembles training images (a dermoscopic photo of an amelanotic
Merkel cell carcinoma, say) passes the gate, and the classifier then scores it with classes it has
never seen. The gate catches images unlike the training data, not diagnoses unlike it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

METHOD = "Mahalanobis distance to the nearest class mean (shared Ledoit-Wolf covariance) + normalised entropy"


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy of each row divided by ``log(n_classes)``: 0 for a certain prediction, 1 for a uniform one."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected an (n, classes >= 2) probability array, got shape {p.shape}")
    return np.clip(-(p * np.log(p)).sum(axis=1) / np.log(p.shape[1]), 0.0, 1.0)


def fit_class_gaussians(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class means (k, D), shared precision (D, D)) of the embeddings of the ``k`` classes present in ``labels``."""
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) == 0 or x.shape[0] != len(labels):
        raise ValueError(f"need one label per embedding ({x.shape[0]} embeddings, {len(labels)} labels)")
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return means, (precision + precision.T) / 2  # exactly symmetric, so the bundle can store one triangle


def mahalanobis_to_nearest_mean(embeddings: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Distance of each embedding to its nearest class mean under the shared covariance."""
    # (x - m)' P (x - m), expanded into x'Px - x'Pm - m'Px + m'Pm: matrix products instead of an
    # (n, k, D) x (D, D) einsum, which numpy runs as a plain C loop (5 ms per image for a 512-d embedding
    # and 11 classes). The products run in torch, not numpy: numpy's OpenBLAS keeps its own threads
    # spinning after a call, and on a 2-core machine they fight torch's threads in the next forward pass
    # (measured: 13 ms added to a 12 ms batch-1 prediction). P need not be symmetric.
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float64))
    m = torch.as_tensor(np.asarray(means, dtype=np.float64))
    p = torch.as_tensor(np.asarray(precision, dtype=np.float64))
    xp, mp = x @ p, m @ p
    squared = ((xp * x).sum(1)[:, None] - xp @ m.T - x @ mp.T + (mp * m).sum(1)[None, :]).numpy()  # (n, k)
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


@dataclass(frozen=True)
class Uncertainty:
    """One image's gate result; ``score > 1`` means the model cannot assess it."""

    score: float
    ood_distance: float
    ood_threshold: float
    entropy: float
    entropy_threshold: float
    out_of_distribution: bool
    low_confidence: bool

    @property
    def cannot_assess(self) -> bool:
        return self.out_of_distribution or self.low_confidence

    def to_dict(self) -> dict:
        return asdict(self)


def flag_rates(assessed: Sequence[Uncertainty]) -> dict[str, float]:
    """How often each flag fired over a set of images (what ``model.json`` records for validation)."""
    return {
        "out_of_distribution": float(np.mean([u.out_of_distribution for u in assessed])),
        "low_confidence": float(np.mean([u.low_confidence for u in assessed])),
        "cannot_assess": float(np.mean([u.cannot_assess for u in assessed])),
    }


@dataclass(frozen=True)
class UncertaintyGate:
    class_means: np.ndarray
    precision: np.ndarray
    ood_threshold: float
    entropy_threshold: float
    ood_quantile: float
    low_confidence_quantile: float

    def assess(self, embeddings: np.ndarray, probabilities: np.ndarray) -> list[Uncertainty]:
        distance = mahalanobis_to_nearest_mean(embeddings, self.class_means, self.precision)
        entropy = normalised_entropy(probabilities)
        return [
            Uncertainty(
                score=float(max(d / self.ood_threshold, e / self.entropy_threshold)),
                ood_distance=float(d),
                ood_threshold=self.ood_threshold,
                entropy=float(e),
                entropy_threshold=self.entropy_threshold,
                out_of_distribution=bool(d > self.ood_threshold),
                low_confidence=bool(e > self.entropy_threshold),
            )
            for d, e in zip(distance, entropy, strict=True)
        ]

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the bundle stores in its uncertainty file (safetensors: tensors only).

        The precision matrix is symmetric, so only its upper triangle is stored (row by row): half the
        file (3.3 instead of 6.6 MB for a 1280-d embedding), and the matrix read back is the same, bit for bit.
        """
        precision = self.precision.astype(np.float32)
        if not np.array_equal(precision, precision.T):
            raise ValueError("the precision matrix is not symmetric; fit it with fit_class_gaussians")
        rows, columns = np.triu_indices(len(precision))
        return {
            "class_means": torch.from_numpy(self.class_means.astype(np.float32)),
            "precision_upper": torch.from_numpy(np.ascontiguousarray(precision[rows, columns])),
        }

    def summary(self) -> dict:
        """What ``model.json`` records (thresholds and how they were chosen)."""
        return {
            "method": METHOD,
            "ood_threshold": self.ood_threshold,
            "ood_quantile": self.ood_quantile,
            "entropy_threshold": self.entropy_threshold,
            "low_confidence_quantile": self.low_confidence_quantile,
        }

    def refit_thresholds(self, embeddings: np.ndarray, probabilities: np.ndarray) -> UncertaintyGate:
        """The same class statistics with both thresholds refitted at the same quantiles of other validation
        outputs (the same images computed at another precision: see ``inference.variants``)."""
        return replace(
            self,
            ood_threshold=float(
                np.quantile(
                    mahalanobis_to_nearest_mean(embeddings, self.class_means, self.precision), self.ood_quantile
                )
            ),
            entropy_threshold=float(np.quantile(normalised_entropy(probabilities), self.low_confidence_quantile)),
        )

    @classmethod
    def from_bundle_parts(cls, tensors: Mapping[str, torch.Tensor], summary: Mapping) -> UncertaintyGate:
        return cls(
            class_means=tensors["class_means"].double().numpy(),
            precision=_precision_matrix(tensors, width=tensors["class_means"].shape[1]),
            ood_threshold=float(summary["ood_threshold"]),
            entropy_threshold=float(summary["entropy_threshold"]),
            ood_quantile=float(summary["ood_quantile"]),
            low_confidence_quantile=float(summary["low_confidence_quantile"]),
        )


def _precision_matrix(tensors: Mapping[str, torch.Tensor], *, width: int) -> np.ndarray:
    """The (D, D) precision from its stored upper triangle (or, in bundles written before, the full matrix)."""
    if "precision" in tensors:
        return tensors["precision"].double().numpy()
    upper = tensors["precision_upper"].double().numpy()
    if len(upper) != width * (width + 1) // 2:
        raise ValueError(
            f"precision_upper holds {len(upper)} values; a {width}-d embedding needs {width * (width + 1) // 2}"
        )
    precision = np.zeros((width, width))
    precision[np.triu_indices(width)] = upper
    return precision + np.triu(precision, 1).T


def fit_uncertainty_gate(
    *,
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    val_embeddings: np.ndarray,
    val_probabilities: np.ndarray,
    ood_quantile: float = 0.99,
    low_confidence_quantile: float = 0.95,
) -> UncertaintyGate:
    """Class Gaussians from the training embeddings; both thresholds as quantiles of the validation scores."""
    for name, q in (("ood_quantile", ood_quantile), ("low_confidence_quantile", low_confidence_quantile)):
        if not 0.5 <= q < 1.0:
            raise ValueError(f"{name} must be in [0.5, 1), not {q}")
    means, precision = fit_class_gaussians(train_embeddings, train_labels)
    # the bundle stores float32: fit the thresholds on exactly what will be loaded
    means, precision = means.astype(np.float32).astype(np.float64), precision.astype(np.float32).astype(np.float64)
    val_distance = mahalanobis_to_nearest_mean(val_embeddings, means, precision)
    val_entropy = normalised_entropy(val_probabilities)
    return UncertaintyGate(
        class_means=means,
        precision=precision,
        ood_threshold=float(np.quantile(val_distance, ood_quantile)),
        entropy_threshold=float(np.quantile(val_entropy, low_confidence_quantile)),
        ood_quantile=ood_quantile,
        low_confidence_quantile=low_confidence_quantile,
    )
