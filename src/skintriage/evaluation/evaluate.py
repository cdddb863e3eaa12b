"""Evaluation of a bundle on a manifest: predictions, metrics with confidence intervals, files on disk.

Two decisions shape every number here:

* **Label space of the multiclass metrics.** A model trained on HAM10000 + DermNet has more classes
  (e.g. ``scc``, ``other_benign``) than the ISIC 2018 test set's seven. The ISIC task asks for one of
  its seven diagnoses, so accuracy, balanced accuracy, macro AUC, ECE and Brier are computed on the
  probabilities restricted to the diagnoses the test source's label map can produce, renormalised to
  sum to 1 (``label_space`` in ``metrics.json``). Where the source's map covers every model class
  (DermNet), nothing changes.
* **Referral metrics use the full model output**, exactly as the deployed system does: the malignancy
  score (summed calibrated probability of every malignant class) against the threshold chosen on
  validation.

Rows whose diagnosis the model has no output for (for example Merkel cell carcinoma in a future test
set) cannot be scored as a multiclass prediction; they are counted in ``n_excluded``, left out of
the multiclass metrics, and kept in the referral metrics, whose truth is the row's triage group.
Rows with ``score_weight`` 0 (ISIC_0035068 in the ISIC 2018 test set) are predicted but not scored,
as in the official scorer.

A bundle with an acquisition classifier (see :mod:`skintriage.triage.acquisition`) is also scored on telling
dermoscopic from clinical images: ``acquisition_accuracy`` against the set's recorded ``acquisition``
column, overall and per type; and ``referral_per_acquisition`` gives the referral as the predictor makes
it by default, each image at the temperature and thresholds of the type the classifier reads
(``calibration.by_acquisition``), where the headline referral uses the pooled ones. Bundles without a
classifier have neither entry (their metrics are unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from skintriage import DISCLAIMER, metrics
from skintriage.common.atomic import atomic_write_text
from skintriage.common.errors import InsufficientDataError
from skintriage.data.records import Manifest
from skintriage.data.sources import get_source
from skintriage.data.taxonomy import label_map
from skintriage.evaluation.result import BOOTSTRAP_RESAMPLES, EvaluationResult, restricted
from skintriage.inference.batch import bundle_dataset, decision_prior, loader_for, predict_outputs
from skintriage.model.bundle import Bundle
from skintriage.triage.acquisition import AcquisitionClassifier, acquisition_accuracy
from skintriage.triage.calibration import (
    AcquisitionCalibration,
    acquisition_calibrations,
    probabilities_at_temperature,
    probabilities_at_temperatures,
)

UNKNOWN = -1  # label of a row whose diagnosis the model has no output for
REPORTED_SPECIFICITY = 0.70  # the referral target: sensitivity >= 0.95 at specificity >= 0.70


def source_label_space(frame: pd.DataFrame, class_names: list[str]) -> list[int]:
    """Model columns a source can be labelled with: the union of its sources' label maps' diagnoses."""
    codes: set[str] = set()
    for source_name in frame["source"].unique():
        try:
            codes |= set(label_map(get_source(source_name).label_map).labels.values())
        except KeyError:  # a source this code does not know: use every class
            return list(range(len(class_names)))
    space = [i for i, name in enumerate(class_names) if name in codes]
    return space or list(range(len(class_names)))


def multiclass_block(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray, decisions: np.ndarray | None = None
) -> dict:
    """Accuracy and balanced accuracy score the class call (arg-max of ``decisions``, default the
    probabilities); macro AUC, ECE and Brier score the probabilities themselves."""
    decisions = probabilities if decisions is None else decisions
    present = sorted({int(c) for c in labels[weights > 0]})
    block = {
        "n_images": int((weights > 0).sum()),
        "accuracy": metrics.accuracy(labels, decisions, weights),
        "balanced_accuracy": metrics.balanced_accuracy(labels, decisions, weights, classes=present),
        "ece": metrics.expected_calibration_error(labels, probabilities, weights),
        "brier": metrics.brier_score(labels, probabilities, weights),
    }
    if len(present) > 1:
        block["macro_auc"] = metrics.macro_auc(labels, probabilities, weights, classes=present)
    return block


def referral_block(score: np.ndarray, malignant: np.ndarray, weights: np.ndarray, threshold: float | None) -> dict:
    keep = weights > 0
    score, malignant, weights = score[keep], malignant[keep], weights[keep]
    block: dict = {"n_malignant": int(malignant.sum()), "n_benign": int((~malignant).sum())}
    if threshold is not None:
        sensitivity, specificity = metrics.sensitivity_specificity_at_threshold(score, malignant, threshold, weights)
        block.update(threshold=threshold, sensitivity=sensitivity, specificity=specificity)
        block["referred_fraction"] = float(np.sum(weights * (score >= threshold)) / weights.sum())
    if malignant.any() and (~malignant).any():
        block["auc"] = metrics.referral_roc_auc(score, malignant, weights)
        block[f"sensitivity_at_specificity_{REPORTED_SPECIFICITY:.2f}"] = metrics.sensitivity_at_specificity(
            score, malignant, REPORTED_SPECIFICITY, weights
        )
        block["specificity_at_sensitivity_0.95"] = metrics.specificity_at_sensitivity(score, malignant, 0.95, weights)
    return block


def confidence_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    decisions: np.ndarray,
    score: np.ndarray,
    malignant: np.ndarray,
    space_weights: np.ndarray,
    weights: np.ndarray,
    threshold: float | None,
) -> dict:
    """95% stratified bootstrap intervals (1,000 resamples, seed 0) for the headline numbers.

    Multiclass intervals resample the label-space rows (stratified by class), referral intervals all
    scored rows (stratified by malignant / benign), matching the rows of the point estimates.
    """
    keep = space_weights > 0
    y, p, d = labels[keep], probabilities[keep], decisions[keep]
    present = sorted(set(y.tolist()))

    def interval(metric_fn, truth, columns) -> list[float]:
        ci = metrics.bootstrap_ci(metric_fn, truth, columns, n_resamples=BOOTSTRAP_RESAMPLES)
        return [ci.low, ci.high]

    ci = {
        "accuracy": interval(metrics.accuracy, y, d),
        "balanced_accuracy": interval(lambda a, b: metrics.balanced_accuracy(a, b, classes=present), y, d),
        "ece": interval(metrics.expected_calibration_error, y, p),
    }
    if len(present) > 1:
        ci["macro_auc"] = interval(lambda a, b: metrics.macro_auc(a, b, classes=present), y, p)
    referral_rows = weights > 0
    m = malignant[referral_rows].astype(int)
    if 0 < m.sum() < len(m):
        s = score[referral_rows]
        two_column = np.column_stack([1 - s, s])  # bootstrap_ci takes (truth, probability rows)
        ci["referral_auc"] = interval(lambda a, b: metrics.referral_roc_auc(b[:, 1], a == 1), m, two_column)
        if threshold is not None:
            for index, key in ((0, "referral_sensitivity"), (1, "referral_specificity")):
                ci[key] = interval(
                    lambda a, b, i=index: metrics.sensitivity_specificity_at_threshold(b[:, 1], a == 1, threshold)[i],
                    m,
                    two_column,
                )
    return ci


def evaluate_bundle(
    bundle: Bundle,
    manifest: Manifest,
    *,
    name: str,
    progress: bool = True,
    calibrated: bool = True,
    bootstrap: bool = True,
    embeddings: bool | None = None,
) -> EvaluationResult:
    """Predict every image of ``manifest`` with ``bundle`` and compute the metrics (see the module docstring).

    ``embeddings``: collect the head-input embeddings too; by default when the bundle has an acquisition
    classifier to score on them.
    """
    if len(manifest) == 0:
        raise InsufficientDataError(f"{name}: the manifest has no images to evaluate")
    dataset = bundle_dataset(bundle, manifest, unknown_label=UNKNOWN)
    outputs = predict_outputs(
        bundle.model,
        loader_for(dataset),
        device=next(bundle.model.parameters()).device,
        embeddings=bundle.acquisition_tensors is not None if embeddings is None else embeddings,
        progress=progress,
        description=f"evaluating {name}",
    )
    frame = manifest.frame.iloc[outputs.rows].reset_index(drop=True)
    return evaluation_result(
        bundle,
        frame,
        outputs.logits,
        outputs.labels,
        name=name,
        calibrated=calibrated,
        bootstrap=bootstrap,
        embeddings=outputs.embeddings,
    )


def evaluation_result(
    bundle: Bundle,
    frame: pd.DataFrame,
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    name: str,
    calibrated: bool = True,
    bootstrap: bool = True,
    embeddings: np.ndarray | None = None,
) -> EvaluationResult:
    """Metrics of already-predicted ``logits`` (rows aligned with ``frame``), calibrated as ``bundle`` says.

    With ``embeddings`` (same rows) and a bundle that has an acquisition classifier, its accuracy too.
    """
    classes = bundle.classes
    calibration = bundle.metadata.calibration
    classifier = AcquisitionClassifier.from_bundle(bundle)
    result = EvaluationResult(
        name=name,
        class_names=classes,
        frame=frame,
        logits=logits,
        labels=labels,
        probabilities=probabilities_at_temperature(logits, bundle.temperature if calibrated else 1.0),
        label_space=source_label_space(frame, classes),
        referral_threshold=calibration.referral_threshold if calibrated and calibration is not None else None,
        n_excluded=int((labels == UNKNOWN).sum()),
        metrics={},
        decision_prior=decision_prior(bundle),
        embeddings=embeddings,
        acquisition_accuracy=None
        if classifier is None or embeddings is None
        else acquisition_accuracy(classifier, embeddings, frame["acquisition"].tolist()),
    )
    calibrations = acquisition_calibrations(None if calibration is None else calibration.to_json_dict())
    if (
        calibrated
        and classifier is not None
        and embeddings is not None
        and set(classifier.classes) <= set(calibrations)
    ):
        result.referral_per_acquisition = referral_per_acquisition(result, classifier, calibrations)
    result.metrics = evaluation_metrics(
        result, model=bundle.metadata.name or str(bundle.path), calibrated=calibrated, bootstrap=bootstrap
    )
    return result


def evaluation_metrics(result: EvaluationResult, *, model: str, calibrated: bool, bootstrap: bool = True) -> dict:
    """The ``metrics.json`` content of an evaluation: headline, per-class, confusion, CIs, breakdowns."""
    labels, probabilities, space_weights = result.space_view()
    decisions = result.decision_view()
    score, malignant, weights = result.referral_view()
    threshold = result.referral_threshold
    scored = space_weights > 0
    out = {
        "dataset": result.name,
        "disclaimer": DISCLAIMER,
        "model": model,
        "calibrated": calibrated,
        "n_excluded": result.n_excluded,
        "label_space": result.label_space_names,
        "class_call": "arg-max of class-balanced probabilities" if result.decision_prior is not None else "arg-max",
        **multiclass_block(labels, probabilities, space_weights, decisions),
        "referral": referral_block(score, malignant, weights, threshold),
    }
    names = result.label_space_names
    per_class = metrics.per_class_metrics(labels[scored], decisions[scored], class_names=names)
    threshold_free = ["auc", "auc_sens_80", "ap"]  # of the probabilities, not of the class call
    per_class[threshold_free] = metrics.per_class_metrics(labels[scored], probabilities[scored], class_names=names)[
        threshold_free
    ]
    out["per_class"] = per_class.to_dict(orient="index")
    matrix = metrics.confusion_matrix(labels[scored], decisions[scored])
    out["confusion_matrix"] = {"classes": result.label_space_names, "counts": np.asarray(matrix).round(6).tolist()}
    if result.acquisition_accuracy is not None:
        out["acquisition_accuracy"] = result.acquisition_accuracy.to_dict()
    if result.referral_per_acquisition is not None:
        out["referral_per_acquisition"] = result.referral_per_acquisition
    if bootstrap:
        out["ci95"] = confidence_intervals(
            labels, probabilities, decisions, score, malignant, space_weights, weights, threshold
        )
    for column in ("acquisition", "source"):
        groups = result.frame[column].fillna("unknown")
        if groups.nunique() > 1:
            out[f"by_{column}"] = {
                str(group): {
                    **multiclass_block(labels[mask], probabilities[mask], space_weights[mask], decisions[mask]),
                    "referral": referral_block(score[mask], malignant[mask], weights[mask], threshold),
                }
                for group in sorted(groups.unique())
                for mask in [(groups == group).to_numpy()]
                if space_weights[mask].sum() > 0
            }
    return json_safe(out)


def referral_per_acquisition(
    result: EvaluationResult, classifier: AcquisitionClassifier, calibrations: Mapping[str, AcquisitionCalibration]
) -> dict:
    """The referral as ``Predictor.predict(acquisition="auto")`` makes it, overall and per recorded acquisition type.

    Each image is scaled by the temperature of the type the classifier reads and compared with that
    type's referral and urgent thresholds; truth and weights as in the headline referral. ``ece`` is the
    calibration of those probabilities, on the label space and weights of the headline ECE: what the
    per-type temperatures are for.
    """
    chosen = [calibrations[kind] for kind, _ in classifier.predict_many(result.embeddings)]
    probabilities = probabilities_at_temperatures(result.logits, [c.temperature for c in chosen])
    score = metrics.malignancy_score(probabilities, result.class_names)
    space_labels, _, space_weights = result.space_view()
    space_probabilities = restricted(probabilities, result.label_space)
    # score >= its own threshold <=> score - threshold >= 0 (exact in floating point): one threshold, 0, for all rows
    margin = score - np.array([c.referral_threshold for c in chosen])
    urgent = score >= np.array([c.urgent["threshold"] for c in chosen])
    _, malignant, weights = result.referral_view()
    groups = result.frame["acquisition"].fillna("unknown").astype(str).to_numpy()

    def block(mask: np.ndarray) -> dict:
        keep = mask & (weights > 0)
        if not keep.any():
            return {"n_malignant": 0, "n_benign": 0}
        m, w = malignant[keep], weights[keep]
        sensitivity, specificity = metrics.sensitivity_specificity_at_threshold(margin[keep], m, 0.0, w)
        return {
            "n_malignant": int(m.sum()),
            "n_benign": int((~m).sum()),
            "sensitivity": sensitivity,
            "specificity": specificity,
            "referred_fraction": float(np.sum(w * (margin[keep] >= 0)) / w.sum()),
            "urgent_fraction": float(np.sum(w * urgent[keep]) / w.sum()),
            "ece": metrics.expected_calibration_error(
                space_labels[mask], space_probabilities[mask], space_weights[mask]
            )
            if space_weights[mask].sum() > 0
            else None,
        }

    everything = np.ones(len(groups), dtype=bool)
    return {
        "method": "each image at the temperature and thresholds of the acquisition type the classifier reads",
        "all": block(everything),
        "by_acquisition": {group: block(groups == group) for group in sorted(set(groups))},
    }


def json_safe(value: object) -> object:
    """NaN and infinities become ``None`` (JSON ``null``) so that ``metrics.json`` is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def predictions_frame(result: EvaluationResult) -> pd.DataFrame:
    columns = ["image_id", "source", "acquisition", "diagnosis", "triage_group", "score_weight"]
    out = result.frame[columns].copy()
    # The bundle's class call over every class, as deployed (the Predictor's): the same rule metrics.json scores.
    calls = metrics.predicted_classes(metrics.decision_probabilities(result.probabilities, result.decision_prior))
    out["predicted"] = [result.class_names[i] for i in calls]
    for i, name in enumerate(result.class_names):
        out[f"p_{name}"] = result.probabilities[:, i].round(6)
    score = metrics.malignancy_score(result.probabilities, result.class_names)
    out["malignancy_score"] = score.round(6)
    if result.referral_threshold is not None:
        out["referred"] = score >= result.referral_threshold  # the unrounded score, as the referral metrics
    return out


def write_evaluation(result: EvaluationResult, out: Path) -> Path:
    """``metrics.json``, ``predictions.csv`` and the report (``report.md`` with PNG plots) in ``out``."""
    from skintriage.evaluation.report import write_report  # plotting is imported only when files are written

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")
    atomic_write_text(out / "predictions.csv", predictions_frame(result).to_csv(index=False))
    write_report(result, out)
    return out
