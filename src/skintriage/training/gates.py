"""The referral engine's gates of a calibrated bundle, fitted on its training and validation images.

What training does after calibration (:func:`skintriage.training.finish.finish`) and what ``skintriage fit-gates`` does
for an existing bundle (:func:`refit_referral_gates`): the pooled urgent threshold, the per-acquisition
calibration, the uncertainty gate and the dermoscopic-or-clinical classifier (see :func:`fit_referral_gates`).
Its own module, apart from the training loop, so that refitting gates does not import the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from skintriage.data.records import ACQUISITIONS, Manifest
from skintriage.inference.batch import Outputs, bundle_dataset, loader_for, predict_outputs
from skintriage.model.bundle import METADATA_FILE, Bundle, BundleError, load_bundle, save_bundle
from skintriage.model.card import write_model_card
from skintriage.model.metadata import ModelDescription
from skintriage.model.registry import SkinClassifier
from skintriage.training.config import TrainConfig
from skintriage.training.data import training_manifest
from skintriage.triage.acquisition import acquisition_accuracy, fit_acquisition_classifier, training_problem
from skintriage.triage.calibration import (
    calibrate,
    calibrate_by_acquisition,
    probabilities_at_temperature,
    probabilities_at_temperatures,
    temperatures_by_acquisition,
    urgent_threshold,
)
from skintriage.triage.uncertainty import fit_uncertainty_gate, flag_rates


@dataclass(frozen=True)
class ReferralGates:
    """What :func:`fit_referral_gates` fits: the ``model.json`` fields it replaces and the tensor files they hash."""

    calibration: dict  # the pooled calibration as it was, with a refitted "urgent" and "by_acquisition"
    uncertainty: dict  # the uncertainty gate's summary
    uncertainty_tensors: dict[str, torch.Tensor]
    acquisition_classifier: dict | None  # its summary; None when training lacked two acquisition types to learn
    acquisition_tensors: dict[str, torch.Tensor] | None

    def apply(self, metadata: ModelDescription | Mapping[str, Any]) -> dict:
        """``metadata`` (as ``model.json``'s plain form) with these fields replaced; a classifier that could not be
        fitted removes a stale one."""
        described = metadata.to_json_dict() if isinstance(metadata, ModelDescription) else metadata
        out = {**described, "calibration": self.calibration, "uncertainty": self.uncertainty}
        out.pop("acquisition_classifier", None)
        if self.acquisition_classifier is not None:
            out["acquisition_classifier"] = self.acquisition_classifier
        return out

    def save(
        self, directory: Path, model: SkinClassifier, metadata: ModelDescription | Mapping[str, Any], *, half: bool
    ) -> Path:
        """:func:`save_bundle` with these gates' fields and tensor files."""
        return save_bundle(
            directory,
            model,
            self.apply(metadata),
            half=half,
            uncertainty_tensors=self.uncertainty_tensors,
            acquisition_tensors=self.acquisition_tensors,
        )


def acquisition_of(rows: pd.DataFrame, outputs: Outputs) -> np.ndarray:
    """Each predicted row's recorded acquisition type (``None`` where the source records none), in output order."""
    return rows["acquisition"].to_numpy(dtype=object)[outputs.rows]


def fit_referral_gates(
    bundle: Bundle, manifest: Manifest, config: TrainConfig, *, progress: bool = True
) -> ReferralGates:
    """The referral engine's gates for a calibrated bundle, from one pass over its training and validation images.

    * the pooled urgent threshold (at the pooled temperature, which is kept as it is);
    * ``calibration.by_acquisition``: temperature, referral and urgent thresholds per acquisition type,
      on that type's validation images (pooled values where a type has too few; see ``calibration``);
    * the uncertainty gate: class Gaussians on training embeddings, thresholds on validation, whose
      entropies are taken at each image's own acquisition-type temperature, as predictions will be;
    * the acquisition classifier on the training embeddings' types, its accuracy on validation.

    Embeddings come from the bundle's own (rounded) weights with evaluation preprocessing.
    """

    def outputs(split: str) -> tuple[Outputs, np.ndarray]:
        subset = manifest.where(split=split, diagnoses=bundle.classes)
        loader = loader_for(bundle_dataset(bundle, subset))
        predicted = predict_outputs(
            bundle.model, loader, embeddings=True, progress=progress, description=f"{split} embeddings"
        )
        return predicted, acquisition_of(subset.frame, predicted)

    (train, train_kinds), (val, val_kinds) = outputs("train"), outputs("val")
    urgent = urgent_threshold(
        probabilities_at_temperature(val.logits, bundle.temperature),
        val.labels,
        bundle.classes,
        target_specificity=config.urgent_specificity,
    )
    calibration = bundle.metadata.calibration
    pooled = {} if calibration is None else calibration.model_dump(exclude_unset=True, exclude={"by_acquisition"})
    pooled["urgent"] = urgent
    by_acquisition = calibrate_by_acquisition(
        val.logits,
        val.labels,
        val_kinds,
        bundle.classes,
        pooled=pooled,
        target_sensitivity=config.target_sensitivity,
        target_specificity=config.urgent_specificity,
    )
    temperatures = temperatures_by_acquisition(val_kinds, by_acquisition, bundle.temperature)
    val_probabilities = probabilities_at_temperatures(val.logits, temperatures)
    gate = fit_uncertainty_gate(
        train_embeddings=train.embeddings,
        train_labels=train.labels,
        val_embeddings=val.embeddings,
        val_probabilities=val_probabilities,
        ood_quantile=config.ood_quantile,
        low_confidence_quantile=config.low_confidence_quantile,
    )
    summary = {
        **gate.summary(),
        "probabilities": "validation entropies at each image's acquisition-type temperature",
        "fitted_on": {"train_images": len(train.labels), "validation_images": len(val.labels)},
        "validation_rates": flag_rates(gate.assess(val.embeddings, val_probabilities)),
    }
    classifier_summary, classifier_tensors = fit_bundle_acquisition_classifier(train, train_kinds, val, val_kinds)
    return ReferralGates(
        calibration={**pooled, "by_acquisition": {kind: c.to_dict() for kind, c in by_acquisition.items()}},
        uncertainty=summary,
        uncertainty_tensors=gate.tensors(),
        acquisition_classifier=classifier_summary,
        acquisition_tensors=classifier_tensors,
    )


def calibration_for_outputs(classes: list[str], val: Outputs, val_kinds: np.ndarray, config: TrainConfig) -> dict:
    """The whole ``calibration`` section fitted afresh on validation outputs: the pooled temperature, referral
    and urgent thresholds, and the same per acquisition type (what a deployment variant records)."""
    pooled = calibrate(val.logits, val.labels, classes, target_sensitivity=config.target_sensitivity).to_dict()
    pooled["urgent"] = urgent_threshold(
        probabilities_at_temperature(val.logits, pooled["temperature"]),
        val.labels,
        classes,
        target_specificity=config.urgent_specificity,
    )
    by_acquisition = calibrate_by_acquisition(
        val.logits,
        val.labels,
        val_kinds,
        classes,
        pooled=pooled,
        target_sensitivity=config.target_sensitivity,
        target_specificity=config.urgent_specificity,
    )
    return {**pooled, "by_acquisition": {kind: c.to_dict() for kind, c in by_acquisition.items()}}


def fit_bundle_acquisition_classifier(
    train: Outputs, train_kinds: np.ndarray, val: Outputs, val_kinds: np.ndarray
) -> tuple[dict | None, dict[str, torch.Tensor] | None]:
    """(``model.json`` summary, tensors) of the classifier fitted on the training embeddings with a recorded type;
    ``(None, None)`` when the training split does not hold enough images of both types to learn them."""
    known = np.isin(train_kinds, ACQUISITIONS)
    if training_problem(train_kinds[known]) is not None:
        return None, None
    classifier = fit_acquisition_classifier(train.embeddings[known], train_kinds[known])
    counts = {kind: int((train_kinds == kind).sum()) for kind in ACQUISITIONS}
    summary = {
        **classifier.summary(),
        "fitted_on": {"train_images": int(known.sum()), **counts},
        "validation_accuracy": acquisition_accuracy(classifier, val.embeddings, val_kinds).to_dict(),
    }
    return summary, classifier.tensors()


def refit_referral_gates(bundle_dir: Path, *, data_root: Path | None = None, progress: bool = True) -> Path:
    """Fit (again) the gates of an existing bundle from the training config it records, on the same splits.

    Weights and the pooled temperature and referral threshold are untouched; ``model.json`` gains (or
    replaces) the pooled urgent threshold, the per-acquisition calibration, the uncertainty gate and the
    acquisition classifier, and the model card is rewritten. The recorded test metrics are not rerun.
    """
    bundle = load_bundle(bundle_dir)
    if bundle.metadata.training is None:
        raise BundleError(f"{bundle_dir / METADATA_FILE} lacks the field training.config: the gates refit from it")
    config = TrainConfig.model_validate(bundle.metadata.training.config)
    manifest = training_manifest(config, data_root=data_root, progress=progress).manifest
    gates = fit_referral_gates(bundle, manifest, config, progress=progress)
    gates.save(bundle_dir, bundle.model, bundle.metadata, half=bundle.metadata.weights_dtype == "float16")
    write_model_card(bundle_dir)
    return bundle_dir
