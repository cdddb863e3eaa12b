"""Deployment variants of a bundle: export, refit at the variant's precision, parity with float32, the default.

What ``skintriage export --variant NAME[,NAME...]`` does, read top to bottom in :func:`export_variants` and
:func:`export_one` (the data and float32's outputs are computed once for all the variants asked for):

1. writes each variant's file into the bundle folder (``model.onnx``; ``model.int8.onnx``, quantised with
   activation ranges measured on training images), none for a PyTorch variant;
2. runs the validation split, the training sources' held-out test split and every ``test_sources`` entry
   through the PyTorch float32 reference and through the variant;
3. fits the variant's whole calibration on *its* validation outputs (temperature, referral and urgent
   thresholds, per acquisition type) and refits the uncertainty gate's two thresholds at the same
   quantiles (its class statistics are the bundle's);
4. compares it with float32 (:func:`parity_report`): probabilities on the same pixels, referral levels of
   every image (each variant with its own thresholds, the way users get them), and the validation
   metrics against float32's 95% confidence intervals; test sets are reported, never used to choose;
5. records all of it under ``variants.<name>`` in ``model.json`` and chooses the default
   (:func:`choose_default`): the fastest admissible variant at batch 1, the demo's path, timed side by
   side here. Admissible: no validation metric worse than float32's 95% CI and referral levels agreeing
   with float32 on at least 99.5% of validation images.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from skintriage.common.extras import ONNX_EXTRA, import_optional
from skintriage.common.timing import interleaved
from skintriage.data.records import Manifest
from skintriage.evaluation.evaluate import UNKNOWN, evaluation_result
from skintriage.inference.batch import Outputs, bundle_dataset, loader_for, predict_outputs
from skintriage.inference.export import export_onnx, quantize_int8
from skintriage.inference.predictor import Predictor
from skintriage.inference.variants import (
    REFERENCE,
    VARIANTS,
    Forward,
    VariantSpec,
    calibrated_at,
    load_forward,
    variant_spec,
)
from skintriage.model.bundle import METADATA_FILE, Bundle, BundleError, load_bundle, sha256_of, write_metadata
from skintriage.model.card import write_model_card
from skintriage.model.metadata import BundleMetadata, Variant
from skintriage.training.config import TrainConfig
from skintriage.training.data import training_manifest
from skintriage.training.finish import held_out_manifests
from skintriage.training.gates import acquisition_of, calibration_for_outputs
from skintriage.triage.calibration import (
    probabilities_at_temperature,
    probabilities_at_temperatures,
    temperatures_by_acquisition,
)
from skintriage.triage.uncertainty import UncertaintyGate, flag_rates

MIN_LEVEL_AGREEMENT = 0.995  # of validation images whose referral level matches float32's
COMPARED_METRICS = ("balanced_accuracy", "macro_auc", "ece", "referral_auc", "referral_sensitivity",
                    "referral_specificity")  # fmt: skip
LOWER_IS_BETTER = ("ece",)
CALIBRATION_IMAGES = 256  # training images whose activations set the int8 ranges
SPEED_REPEATS = 20


def export_variants(
    bundle_dir: Path,
    names: list[str],
    *,
    data_root: Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    speed_repeats: int = SPEED_REPEATS,
    progress: bool = True,
) -> dict[str, Variant]:
    """Export, refit and compare each variant of ``names`` in the bundle in ``bundle_dir``; record them and the
    new default. The data and float32's outputs, which every variant is compared with, are computed once."""
    specs = [variant_spec(name) for name in names]
    for spec in specs:  # before any data is read: a refused name or a missing extra is the first thing to say
        if spec.name == REFERENCE:
            raise BundleError(f"{REFERENCE} is the bundle itself (its top-level calibration); choose another variant")
        if spec.engine == "onnxruntime":
            for module in ("onnx", "onnxscript", "onnxruntime"):
                import_optional(module, extra=ONNX_EXTRA, needed_for=f"skintriage export --variant {spec.name}")
    bundle = load_bundle(bundle_dir)
    if bundle.metadata.training is None:
        raise BundleError(
            f"{bundle_dir / METADATA_FILE} lacks training.config: a variant refits on its validation split"
        )
    config = TrainConfig.model_validate(bundle.metadata.training.config)
    manifest = training_manifest(config, data_root=data_root, progress=progress).manifest
    sets = {"validation": manifest.where(split="val", diagnoses=bundle.classes)}
    sets |= held_out_manifests(config, manifest, data_root=data_root, progress=progress)
    reference = {
        key: outputs_of(bundle, m, None, progress=progress, what=f"{key} ({REFERENCE})") for key, m in sets.items()
    }
    exported = {}
    for spec in specs:
        variant = export_one(
            bundle,
            spec,
            config,
            manifest,
            sets,
            reference,
            calibration_images=calibration_images,
            progress=progress,
        )
        bundle = _with_variant(bundle, spec.name, variant)
        exported[spec.name] = variant
    write_metadata(bundle.path, choose_default(bundle, repeats=speed_repeats))
    write_model_card(bundle.path)
    return exported


def export_one(
    bundle: Bundle,
    spec: VariantSpec,
    config: TrainConfig,
    manifest: Manifest,
    sets: dict[str, Manifest],
    reference: dict[str, Outputs],
    *,
    calibration_images: int,
    progress: bool,
) -> Variant:
    """One variant: its file, its calibration and gate thresholds refitted on its own validation outputs, and its
    parity report against float32's ``reference`` outputs on ``sets``."""
    name = spec.name
    if spec.file == "model.onnx":
        export_onnx(bundle, bundle.path / spec.file)
    elif spec.precision == "int8":
        train = manifest.where(split="train", diagnoses=bundle.classes)
        sample = train.frame.sample(n=min(calibration_images, len(train)), random_state=0).index
        sample_set = bundle_dataset(bundle, Manifest(train.frame.loc[sample].reset_index(drop=True), train.root))
        batches = (pixels for pixels, _, _ in loader_for(sample_set, batch_size=32))
        with tempfile.TemporaryDirectory(prefix="skintriage-export-") as scratch:
            float_file = export_onnx(bundle, Path(scratch) / "model.onnx")
            quantize_int8(float_file, bundle.path / spec.file, batches)
    engine = load_forward(bundle, name, check_recorded_file=False)
    candidate = {
        key: outputs_of(bundle, m, engine, progress=progress, what=f"{key} ({name})") for key, m in sets.items()
    }

    val_kinds = acquisition_of(sets["validation"].frame, candidate["validation"])
    calibration = calibration_for_outputs(bundle.classes, candidate["validation"], val_kinds, config)
    entry = {
        "engine": spec.engine,
        "precision": spec.precision,
        "file": spec.file,
        "sha256": sha256_of(bundle.path / spec.file) if spec.file else None,
        "method": spec.summary + (f" ({calibration_images} training images)" if spec.precision == "int8" else ""),
        "calibration": calibration,
    }
    provisional = calibrated_at(_with_variant(bundle, name, Variant.model_validate(entry)), name)
    if bundle.uncertainty_tensors is not None and bundle.metadata.uncertainty is not None:
        entry["uncertainty"] = refit_uncertainty(provisional, candidate["validation"], val_kinds)
    variant = Variant.model_validate(entry)
    calibrated = calibrated_at(_with_variant(bundle, name, variant), name)
    report = parity_report(bundle, calibrated, sets, reference, candidate)
    return variant.model_copy(update={"parity": report, **admissibility(report)})


def outputs_of(bundle: Bundle, manifest: Manifest, engine: Forward | None, *, progress: bool, what: str) -> Outputs:
    """Logits and embeddings of ``manifest`` (evaluation preprocessing) on ``engine`` (``None``: float32)."""
    loader = loader_for(bundle_dataset(bundle, manifest, unknown_label=UNKNOWN))
    return predict_outputs(bundle.model, loader, embeddings=True, engine=engine, progress=progress, description=what)


def refit_uncertainty(calibrated: Bundle, val: Outputs, val_kinds: np.ndarray) -> dict:
    """The gate's thresholds at the configured quantiles of the variant's validation distances and entropies."""
    summary = calibrated.metadata.uncertainty.to_json_dict()
    gate = UncertaintyGate.from_bundle_parts(calibrated.uncertainty_tensors, summary)
    calibration = calibrated.metadata.calibration
    temperatures = temperatures_by_acquisition(val_kinds, calibration.by_acquisition or {}, calibration.temperature)
    probabilities = probabilities_at_temperatures(val.logits, temperatures)
    gate = gate.refit_thresholds(val.embeddings, probabilities)
    return {
        "ood_threshold": gate.ood_threshold,
        "entropy_threshold": gate.entropy_threshold,
        "validation_rates": flag_rates(gate.assess(val.embeddings, probabilities)),
    }


def parity_report(
    reference_bundle: Bundle,
    calibrated: Bundle,
    sets: dict[str, Manifest],
    reference: dict[str, Outputs],
    candidate: dict[str, Outputs],
) -> dict:
    """The variant against float32 on every set: probabilities, referral levels, metrics (validation vs CIs)."""
    ours = Predictor(calibrated)  # the variant's thresholds (the outputs below are computed already)
    theirs = Predictor(reference_bundle)  # float32's thresholds
    report: dict = {"sets": {}}
    for key, manifest in sets.items():
        ref, new = reference[key], candidate[key]
        same_pixels = probabilities_at_temperature(ref.logits, reference_bundle.temperature)
        moved = np.abs(probabilities_at_temperature(new.logits, reference_bundle.temperature) - same_pixels)
        levels_ref = [p.referral.level for p in theirs.predictions_for_outputs(ref.logits, ref.embeddings)]
        levels_new = [p.referral.level for p in ours.predictions_for_outputs(new.logits, new.embeddings)]
        levels_old = [p.referral.level for p in theirs.predictions_for_outputs(new.logits, new.embeddings)]
        agree = np.mean([a == b for a, b in zip(levels_ref, levels_new, strict=True)])
        agree_old = np.mean([a == b for a, b in zip(levels_ref, levels_old, strict=True)])
        frame = manifest.frame.iloc[new.rows].reset_index(drop=True)
        block = {
            "n_images": len(new.labels),
            "max_abs_probability": float(moved.max(initial=0.0)),
            "mean_abs_probability": float(moved.mean()) if moved.size else 0.0,
            "argmax_agreement": float(np.mean(ref.logits.argmax(1) == new.logits.argmax(1))),
            "level_agreement": float(agree),
            "level_disagreements": int(sum(a != b for a, b in zip(levels_ref, levels_new, strict=True))),
            "level_agreement_with_float32_thresholds": float(agree_old),
        }
        metrics = {  # float32's validation CIs are bootstrapped; the variant needs only its point values
            model: evaluation_result(
                bundle,
                frame,
                out.logits,
                out.labels,
                name=key,
                bootstrap=model == "float32" and key == "validation",
                embeddings=out.embeddings,
            ).metrics
            for model, bundle, out in (("float32", reference_bundle, ref), ("variant", calibrated, new))
        }
        block["metrics"] = compare_metrics(metrics["float32"], metrics["variant"])
        report["sets"][key] = block
    return report


def compare_metrics(reference: dict, variant: dict) -> dict:
    """Each compared metric: float32's value and 95% CI (where bootstrapped), the variant's, whether it lies inside,
    and ``not_worse``: inside, or beyond the CI's better end (a refitted temperature can lower the ECE)."""
    out = {}
    for key in COMPARED_METRICS:
        ref_value, new_value = _headline(reference, key), _headline(variant, key)
        interval = (reference.get("ci95") or {}).get(key)
        out[key] = {
            "float32": ref_value,
            "float32_ci95": interval,
            "variant": new_value,
            "within_ci": None if interval is None or new_value is None else interval[0] <= new_value <= interval[1],
            "not_worse": None
            if interval is None or new_value is None
            else (new_value <= interval[1] if key in LOWER_IS_BETTER else new_value >= interval[0]),
        }
    return out


def _headline(metrics: dict, key: str) -> float | None:
    if key.startswith("referral_"):
        value = (metrics.get("referral") or {}).get(key.removeprefix("referral_"))
    else:
        value = metrics.get(key)
    return None if value is None else float(value)


def admissibility(report: dict) -> dict:
    """``admissible`` and ``verdict``: the default variant's rule applied to the validation block."""
    validation = report["sets"]["validation"]
    worse = [k for k, m in validation["metrics"].items() if m["not_worse"] is False]
    problems = [f"{k} worse than float32's 95% CI" for k in worse]
    if validation["level_agreement"] < MIN_LEVEL_AGREEMENT:
        problems.append(
            f"referral levels agree with float32 on {validation['level_agreement']:.2%} of validation images "
            f"(at least {MIN_LEVEL_AGREEMENT:.1%} needed)"
        )
    if problems:
        return {"admissible": False, "verdict": "; ".join(problems)}
    return {
        "admissible": True,
        "verdict": f"no compared validation metric worse than float32's 95% CI; referral levels agree on "
        f"{validation['level_agreement']:.2%} of validation images",
    }


def measure_speed(bundle: Bundle, names: list[str], *, repeats: int = SPEED_REPEATS) -> dict[str, dict]:
    """Median batch-1 and batch-32 forward milliseconds of each variant, timed side by side (interleaved)."""
    size = bundle.metadata.preprocessing.input_size
    generator = torch.Generator().manual_seed(0)
    single, batch = (
        torch.randn(1, 3, size, size, generator=generator),
        torch.randn(32, 3, size, size, generator=generator),
    )
    engines = {name: load_forward(bundle, name) for name in names}
    out: dict[str, dict] = {name: {} for name in names}
    for label, pixels, count in (("batch_1", single, repeats), ("batch_32", batch, max(1, repeats // 5))):
        timings = interleaved(
            {name: (lambda _, f=f, x=pixels: f(x)) for name, f in engines.items()},
            warmup=1,
            repeats=count,
            progress=False,
        )
        for name, timing in timings.items():
            out[name][f"{label}_ms"] = round(1e3 * timing.p50, 3)
    return out


def choose_default(bundle: Bundle, *, repeats: int = SPEED_REPEATS) -> BundleMetadata:
    """``bundle``'s metadata with every recorded variant's speed and the default: the fastest admissible at batch 1."""
    variants = dict(bundle.metadata.variants or {})
    runnable = [name for name in variants if _runnable(bundle, name)]
    speed = measure_speed(bundle, [REFERENCE, *runnable], repeats=repeats)
    reference = {f"{REFERENCE}_{key}": value for key, value in speed[REFERENCE].items()}
    for name in variants:
        measured = None if name not in speed else {**speed[name], **reference, "where": machine()}
        variants[name] = variants[name].model_copy(update={"speed": measured})
    admissible = [name for name in runnable if variants[name].admissible]
    candidates = [REFERENCE, *admissible]
    default = min(candidates, key=lambda name: speed[name]["batch_1_ms"])
    return bundle.metadata.model_copy(update={"variants": variants, "default_variant": default})


def machine() -> str:
    """Where a speed was measured, in words (which variant wins depends on the CPU and its threads)."""
    import platform

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _runnable(bundle: Bundle, name: str) -> bool:
    spec = VARIANTS.get(name)
    return spec is not None and (spec.file is None or (bundle.path / spec.file).is_file())


def _with_variant(bundle: Bundle, name: str, variant: Variant) -> Bundle:
    variants = {**(bundle.metadata.variants or {}), name: variant}
    return replace(bundle, metadata=bundle.metadata.model_copy(update={"variants": variants}))
