"""``model.json`` as typed records: one pydantic model per section, so a bundle is read once and checked by field.

:class:`ModelDescription` is what the caller of :func:`~skintriage.model.bundle.save_bundle` supplies
(class names, preprocessing, training provenance, calibration, gates, metrics);
:class:`BundleMetadata` adds what ``save_bundle`` itself records about the files (format version,
architecture, taxonomy and code versions, the weights' dtype and hash). Field order is the order of
``model.json``, and only fields that were set are written (:meth:`Section.to_json_dict`), so
reading a bundle and writing it again gives the same file.

Sections whose shape this package defines forbid unknown fields: a misspelt ``referal_threshold`` is an
error naming it rather than a threshold silently left at its default. Sections owned by higher layers
(the training config, the data summary, the evaluation headlines) are kept as JSON objects here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from skintriage.data.presets import Normalization


class Section(BaseModel):
    """A part of ``model.json`` whose fields are all known here (unknown ones are an error)."""

    model_config = ConfigDict(extra="forbid")

    def to_json_dict(self) -> dict[str, Any]:
        """The fields that were set, as ``model.json`` holds them (nested plain dicts and lists)."""
        return self.model_dump(exclude_unset=True)


class NormalizationSection(Section):
    mean: list[float]
    std: list[float]

    def to_normalization(self) -> Normalization:
        return Normalization.from_dict(self.model_dump())


class Preprocessing(Section):
    """How images become model inputs; the predictor, the dataset and the ONNX export all read it from here."""

    input_size: int
    crop_fraction: float = 1.0
    resize: str | None = None  # a description of the resize policy, for people
    normalization: NormalizationSection | None = None
    mask_watermark_sources: list[str] = []


class Architecture(Section):
    """The registered backbone the weights are for (written by ``save_bundle`` from the model's build record)."""

    name: str
    num_classes: int | None = None
    stem: Literal["auto", "standard", "small"] = "auto"
    pretrained: str | None = None  # what training started from ("none", "imagenet ...", a path)


class Training(Section):
    """Provenance: the training config, the data it saw, the epoch kept."""

    config: dict[str, Any]  # a TrainConfig dump (training/ owns its shape)
    data: dict[str, Any] | None = None  # sources, licences, split fractions, counts
    best_epoch: int | None = None


class UrgentThreshold(Section):
    threshold: float
    target_specificity: float | None = None
    validation_sensitivity: float | None = None
    validation_specificity: float | None = None


class CalibrationEntry(Section):
    """A temperature and the referral and urgent thresholds fitted with it (pooled, or one acquisition type's)."""

    temperature: float = 1.0
    referral_threshold: float | None = None
    target_sensitivity: float | None = None
    validation: dict[str, float | int] | None = None  # NLL/ECE before and after, rates at the threshold, counts
    urgent: UrgentThreshold | None = None


class AcquisitionCalibrationEntry(CalibrationEntry):
    fallback: str | None = None  # why this type kept the pooled values (too few images), or null


class Calibration(CalibrationEntry):
    """The pooled calibration, and optionally one per acquisition type (``dermoscopic``, ``clinical``)."""

    by_acquisition: dict[str, AcquisitionCalibrationEntry] | None = None


class Decision(Section):
    """How the class call is made from the probabilities."""

    rule: Literal["argmax", "class_balanced"]
    training_prior: list[float] | None = None
    validation_balanced_accuracy: dict[str, float] | None = None


class UncertaintySummary(Section):
    """The uncertainty gate's thresholds and how they were chosen; its statistics are in ``uncertainty.safetensors``."""

    method: str | None = None
    ood_threshold: float
    ood_quantile: float | None = None
    entropy_threshold: float
    low_confidence_quantile: float | None = None
    probabilities: str | None = None
    fitted_on: dict[str, int] | None = None
    validation_rates: dict[str, float] | None = None
    sha256: str | None = None  # of uncertainty.safetensors; set by save_bundle when it writes the file


class AcquisitionClassifierSummary(Section):
    """The dermoscopic-or-clinical classifier's summary; its weights are in ``acquisition.safetensors``."""

    method: str | None = None
    classes: list[str]
    threshold: float
    fitted_on: dict[str, int] | None = None
    validation_accuracy: dict[str, Any] | None = None
    sha256: str | None = None  # of acquisition.safetensors; set by save_bundle when it writes the file


ENGINES = ("torch", "onnxruntime")
PRECISIONS = ("float32", "bfloat16", "int8")
Engine = Literal["torch", "onnxruntime"]
Precision = Literal["float32", "bfloat16", "int8"]


class VariantUncertainty(Section):
    """The uncertainty gate's thresholds refitted on a variant's validation outputs (its class statistics are
    the bundle's, from float32 training embeddings)."""

    ood_threshold: float
    entropy_threshold: float
    validation_rates: dict[str, float] | None = None


class Variant(Section):
    """One engine and precision the bundle can run at, with everything fitted on its own validation outputs.

    The bundle's top-level calibration and uncertainty thresholds are the PyTorch float32 variant's; a variant
    entry carries the same sections fitted at its own precision, so what a user runs is what was validated.
    """

    engine: Engine
    precision: Precision
    file: str | None = None  # the model file in the bundle folder (ONNX variants); None: the PyTorch weights
    sha256: str | None = None  # of ``file``
    method: str | None = None  # how the variant was made (quantisation settings), for people
    calibration: Calibration
    uncertainty: VariantUncertainty | None = None
    parity: dict[str, Any] | None = None  # against PyTorch float32: probabilities, referral levels, metrics
    speed: dict[str, Any] | None = None  # batch-1 and batch-32 forward timings where it was exported
    admissible: bool | None = None  # meets the default variant's rule (metrics within CIs, level agreement)
    verdict: str | None = None  # why it is or is not admissible, in words


class ModelDescription(Section):
    """What the caller of ``save_bundle`` describes: the model's classes, inputs, provenance, gates and metrics."""

    name: str | None = None
    classes: list[str]
    preprocessing: Preprocessing
    training: Training | None = None
    calibration: Calibration | None = None
    decision: Decision | None = None
    uncertainty: UncertaintySummary | None = None
    metrics: dict[str, dict[str, Any]] | None = None  # evaluation headlines by test set (evaluation/ owns them)
    acquisition_classifier: AcquisitionClassifierSummary | None = None
    variants: dict[str, Variant] | None = None  # engines and precisions other than PyTorch float32, each refitted
    default_variant: str | None = None  # what Predictor.load(variant="auto") runs; None: PyTorch float32


class BundleMetadata(ModelDescription):
    """The whole ``model.json``: the description plus what ``save_bundle`` records about the files."""

    format_version: int
    architecture: Architecture
    taxonomy_version: str
    code_version: str | None = None
    weights_dtype: Literal["float16", "float32"] | None = None
    weights_sha256: str


FILE_FIELDS = tuple(name for name in BundleMetadata.model_fields if name not in ModelDescription.model_fields)


def validation_problems(error: ValidationError) -> str:
    """pydantic's errors as ``field.path: what is wrong``, one per field; missing fields are listed together."""
    missing, wrong = [], []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "missing":
            missing.append(where)
        elif problem["type"] == "extra_forbidden":
            wrong.append(f"{where}: unknown field")
        else:
            wrong.append(f"{where}: {problem['msg']} (got {problem['input']!r:.60})")
    if missing:
        wrong.insert(0, f"lacks the field(s) {', '.join(missing)}")
    return "; ".join(wrong)
