"""After the last epoch: the best weights become a calibrated bundle with its referral gates, and every test set
is evaluated. Test sets choose nothing; everything is fitted on the validation split.

Read top to bottom, :func:`finish`:

1. loads the best epoch's weights (``best.safetensors``), rounds them as the bundle stores them (float16) and
   writes an uncalibrated bundle, so that every later number is computed from the weights as stored;
2. scores the validation split once (logits and embeddings);
3. fits the calibration (temperature, referral threshold; :mod:`skintriage.triage.calibration`) and chooses the
   class call (:func:`choose_class_call`: plain or class-balanced arg-max);
4. fits the referral gates (:mod:`skintriage.training.gates`: urgent threshold, per-acquisition calibration,
   uncertainty gate, the dermoscopic-or-clinical classifier);
5. evaluates validation (calibrated), the training sources' held-out test split and every ``test_sources``
   entry into ``eval/<name>/``, records their headline metrics in the bundle and writes its model card.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from torch import nn

from skintriage import metrics
from skintriage.data.dataset import ManifestDataset
from skintriage.data.records import Manifest
from skintriage.data.sources import get_source
from skintriage.evaluation.evaluate import evaluate_bundle, evaluation_result, write_evaluation
from skintriage.evaluation.result import EvaluationResult
from skintriage.model.bundle import Bundle, load_bundle, round_to_bundle, save_bundle
from skintriage.model.card import write_model_card
from skintriage.model.registry import create_model, normalization_for
from skintriage.training.config import TrainConfig
from skintriage.training.gates import fit_referral_gates
from skintriage.training.imbalance import effective_class_prior
from skintriage.training.state import BEST_FILE, LOG_FILE
from skintriage.triage.calibration import calibrate, probabilities_at_temperature


def finish(
    config: TrainConfig,
    out: Path,
    manifest: Manifest,
    class_names: list[str],
    summary: dict,
    *,
    data_root: Path | None,
    progress: bool,
) -> Path:
    """Round, calibrate and bundle the best weights; evaluate every test set. Returns the bundle folder."""
    model, metadata = best_model(config, out, class_names, summary)
    bundle_dir = out / "bundle"
    save_bundle(bundle_dir, model, metadata, half=True)
    bundle = load_bundle(bundle_dir)

    val = manifest.where(split="val", diagnoses=class_names)
    # embeddings too: the acquisition classifier fitted below is scored on the same validation pass
    val_result = evaluate_bundle(bundle, val, name="validation", progress=progress, calibrated=False, embeddings=True)
    calibration = calibrate(
        val_result.logits, val_result.labels, class_names, target_sensitivity=config.target_sensitivity
    )
    metadata["calibration"] = calibration.to_dict()
    metadata["decision"] = choose_class_call(
        logits=val_result.logits,
        labels=val_result.labels,
        prior=training_prior(config, manifest, class_names),
        temperature=calibration.temperature,
    )
    save_bundle(bundle_dir, model, metadata, half=True)
    gates = fit_referral_gates(load_bundle(bundle_dir), manifest, config, progress=progress)
    metadata = gates.apply(metadata)
    gates.save(bundle_dir, model, metadata, half=True)
    bundle = load_bundle(bundle_dir)

    results = {
        "validation": evaluation_result(  # the calibrated view of the same validation logits
            bundle,
            val_result.frame,
            val_result.logits,
            val_result.labels,
            name="validation",
            embeddings=val_result.embeddings,
        ),
        **held_out_results(config, bundle, manifest, data_root=data_root, progress=progress),
    }
    for name, result in results.items():
        write_evaluation(result, out / "eval" / name)
    metadata["metrics"] = {name: result.headline() for name, result in results.items()}
    gates.save(bundle_dir, model, metadata, half=True)
    write_model_card(bundle_dir)
    return bundle_dir


def best_model(config: TrainConfig, out: Path, class_names: list[str], summary: dict) -> tuple[nn.Module, dict]:
    """The best epoch's weights, rounded as the bundle stores them, and the bundle's metadata before calibration."""
    model = create_model(config.model, num_classes=len(class_names), input_size=config.input_size, stem=config.stem)
    model.load_state_dict(load_file(str(out / BEST_FILE)))
    model.config = replace(model.config, pretrained=config.pretrained)  # what training began from
    round_to_bundle(model, half=True)
    preprocessing = {
        "input_size": config.input_size,
        "crop_fraction": 1.0,
        "resize": "short side to input_size (bicubic for cached training images, area for evaluation), centre crop",
        "normalization": normalization_for(config.model).to_dict(),
        "mask_watermark_sources": [s.name for s in config.sources + config.test_sources if s.mask_watermark],
    }
    with (out / LOG_FILE).open(encoding="utf-8") as handle:
        history = list(csv.DictReader(handle))
    best = max(history, key=lambda row: float(row["val_balanced_accuracy"]))
    metadata = {
        "name": config.name,
        "classes": class_names,
        "preprocessing": preprocessing,
        "training": {"config": config.model_dump(), "data": summary, "best_epoch": int(best["epoch"])},
        "calibration": {"temperature": 1.0},
    }
    return model, metadata


def training_prior(config: TrainConfig, manifest: Manifest, class_names: list[str]) -> np.ndarray:
    """The class prior the model saw in training (:func:`~skintriage.training.imbalance.effective_class_prior`);
    no image is read, only the training split's labels and acquisition types."""
    train_set = ManifestDataset(
        manifest.where(split="train", diagnoses=class_names), transform=None, class_names=class_names
    )
    return effective_class_prior(config, train_set)


def choose_class_call(*, logits: np.ndarray, labels: np.ndarray, prior: np.ndarray, temperature: float) -> dict:
    """Plain or class-balanced arg-max (see ``calibration``), whichever has the higher validation balanced accuracy.

    Balanced accuracy is taken over the classes present in ``labels``; a tie keeps the plain arg-max.
    """
    probabilities = probabilities_at_temperature(logits, temperature)
    present = sorted(set(labels.tolist()))
    scores = {
        "argmax": metrics.balanced_accuracy(labels, probabilities, classes=present),
        "class_balanced": metrics.balanced_accuracy(
            labels, metrics.decision_probabilities(probabilities, prior), classes=present
        ),
    }
    return {
        "rule": max(scores, key=scores.get),
        "training_prior": np.asarray(prior).tolist(),
        "validation_balanced_accuracy": scores,
    }


def held_out_results(
    config: TrainConfig, bundle: Bundle, manifest: Manifest, *, data_root: Path | None, progress: bool
) -> dict[str, EvaluationResult]:
    """The held-out split of the training sources (e.g. ``dermnet_test``), then every ``test_sources`` entry."""
    return {
        name: evaluate_bundle(bundle, test, name=name, progress=progress)
        for name, test in held_out_manifests(config, manifest, data_root=data_root, progress=progress).items()
    }


def held_out_manifests(
    config: TrainConfig, manifest: Manifest, *, data_root: Path | None, progress: bool
) -> dict[str, Manifest]:
    """The test sets of a training config by name: its sources' held-out split, then each ``test_sources`` entry."""
    out = {}
    test = manifest.where(split="test")
    if len(test):
        out["_".join(sorted(test.frame["source"].unique())) + "_test"] = test
    for source_config in config.test_sources:
        source = get_source(source_config.name)
        out[source.name] = source.load(config.source_root(source_config, data_root), progress=progress).with_images()
    return out
