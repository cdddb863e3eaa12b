"""The record of one evaluation (:class:`EvaluationResult`) and the views of it that metrics and plots share.

Its own module so that both :mod:`skintriage.evaluation.evaluate`, which fills it, and :mod:`skintriage.evaluation.report`, which
plots it, can import it without importing each other: ``evaluate`` writes the report through ``report``,
and ``report`` needs only the record, never the evaluation code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from skintriage import metrics
from skintriage.data.taxonomy import is_malignant
from skintriage.triage.acquisition import AcquisitionAccuracy

BOOTSTRAP_RESAMPLES = 1000  # resamples of every bootstrap confidence interval an evaluation reports


@dataclass
class EvaluationResult:
    name: str
    class_names: list[str]
    frame: pd.DataFrame  # manifest rows that were scored, in prediction order
    logits: np.ndarray
    labels: np.ndarray  # index into class_names
    probabilities: np.ndarray  # calibrated, full model output
    label_space: list[int]  # columns the multiclass metrics use
    referral_threshold: float | None
    n_excluded: int
    metrics: dict
    decision_prior: np.ndarray | None = None  # class call = argmax of p / prior (class-balanced); None: argmax of p
    embeddings: np.ndarray | None = None  # head-input embeddings, when they were collected
    acquisition_accuracy: AcquisitionAccuracy | None = None  # the bundle's acquisition classifier on this set
    referral_per_acquisition: dict | None = None  # see :func:`referral_per_acquisition`

    def space_view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels as indices into the label space, restricted probabilities, weights): what the multiclass
        metrics and plots see. Rows outside the label space (or with ``score_weight`` 0) get weight 0."""
        position = {column: i for i, column in enumerate(self.label_space)}
        weights = self.frame["score_weight"].astype(float).to_numpy()
        weights = np.where(np.isin(self.labels, self.label_space), weights, 0.0)
        labels = np.array([position.get(int(c), 0) for c in self.labels], dtype=int)
        return labels, restricted(self.probabilities, self.label_space), weights

    def decision_view(self) -> np.ndarray:
        """Label-space probabilities whose arg-max is the model's class call (see ``calibration``)."""
        return restricted(metrics.decision_probabilities(self.probabilities, self.decision_prior), self.label_space)

    def referral_view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(malignancy score, malignant truth from the triage group, weights) over every row, as deployed."""
        score = metrics.malignancy_score(self.probabilities, self.class_names)
        malignant = self.frame["triage_group"].map(is_malignant).to_numpy(dtype=bool)
        return score, malignant, self.frame["score_weight"].astype(float).to_numpy()

    @property
    def label_space_names(self) -> list[str]:
        return [self.class_names[c] for c in self.label_space]

    def headline(self) -> dict:
        keys = (
            "n_images",
            "accuracy",
            "balanced_accuracy",
            "macro_auc",
            "ece",
            "referral",
            "ci95",
            "acquisition_accuracy",
        )
        return {key: self.metrics[key] for key in keys if key in self.metrics}


def restricted(probabilities: np.ndarray, columns: list[int]) -> np.ndarray:
    p = probabilities[:, columns]
    return p / p.sum(axis=1, keepdims=True)
