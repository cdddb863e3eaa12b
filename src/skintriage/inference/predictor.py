"""From an image to a referral: the one call the demo and ``skintriage predict`` make.

:class:`Predictor` holds a loaded bundle and runs, per image: the bundle's preprocessing, one forward
pass (logits and the embedding the uncertainty gate needs), the acquisition type (dermoscopic or
clinical: the caller's, or the bundle's classifier's reading of the embedding; see
:mod:`skintriage.triage.acquisition`), temperature scaling at that type's temperature, the uncertainty gate,
the referral engine with that type's thresholds and, on request, Grad-CAM. A bundle without
per-acquisition calibration uses its pooled temperature and thresholds, as before. It keeps no state
between calls, so one predictor serves concurrent requests.

The plain forward pass runs on the chosen *variant* (engine and precision: PyTorch float32, PyTorch
bfloat16, ONNX Runtime float32 or int8; see :mod:`skintriage.inference.variants`), and the calibration and
thresholds are the ones fitted at that variant's precision ("auto": the bundle's recorded default).
Saliency always runs on the PyTorch float32 model (Grad-CAM needs its gradients); with another variant
the probabilities still come from the variant's own forward pass, so they match its thresholds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skintriage import DISCLAIMER
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.dataset import prepare_pixels
from skintriage.data.images import ImageDecodeError, decode_image
from skintriage.data.prefetch import prefetch_decoded
from skintriage.data.taxonomy import DIAGNOSES, TriageGroup, malignancy_probability, malignant_indices
from skintriage.inference.backend import AUTO as AUTO_VARIANT
from skintriage.inference.backend import BackendChoice, choose_backend
from skintriage.inference.batch import decision_prior, eval_preset, forward
from skintriage.inference.explain import crop_box, overlay, saliency
from skintriage.inference.variants import REFERENCE, calibrated_at
from skintriage.metrics import decision_probabilities
from skintriage.model.bundle import Bundle, load_bundle
from skintriage.triage.acquisition import (
    AUTO,
    AcquisitionClassifier,
    AcquisitionRequest,
    AcquisitionUsed,
    check_request,
    choose_acquisition,
)
from skintriage.triage.calibration import (
    AcquisitionCalibration,
    acquisition_calibrations,
    probabilities_at_temperatures,
)
from skintriage.triage.guidance import topics_for_differential
from skintriage.triage.referral import ClinicalContext, ReferralDecision, ReferralPolicy, decide
from skintriage.triage.uncertainty import Uncertainty, UncertaintyGate


@dataclass
class Prediction:
    file: str | None
    probabilities: dict[str, float]  # calibrated, per diagnosis code, in the bundle's class order
    # summed per triage group; None for a group the bundle has no class of (today MCC and cutaneous metastasis):
    # the model cannot measure it, and a 0.0 would read as a measurement
    triage_probabilities: dict[str, float | None]
    malignancy_probability: float
    class_call: str  # the bundle's class decision (plain or class-balanced arg-max)
    uncertainty: Uncertainty | None
    referral: ReferralDecision
    guidance_topics: list[str]
    heatmap: np.ndarray | None = None  # Grad-CAM of the malignancy probability on the model input, when asked for
    acquisition: AcquisitionUsed | None = None  # the type the image was taken to be, and the calibration it selected
    saliency_grid: tuple[int, int] | None = None  # (rows, columns) of the feature map the heatmap came from
    variant: str | None = None  # the engine and precision that computed it, whose thresholds it was judged by

    @property
    def saliency_note(self) -> str | None:
        """What the overlay shows, in words (``None`` without saliency)."""
        if self.heatmap is None:
            return None
        if not self.heatmap.any():
            return (
                "Grad-CAM: no region stood out as raising the malignancy probability more than the rest; the "
                f"probability ({self.malignancy_probability:.2f}) comes from the analysed square as a whole."
            )
        grid = (
            f"a {self.saliency_grid[0]}x{self.saliency_grid[1]} grid" if self.saliency_grid else "the last feature map"
        )
        return (
            "Grad-CAM: brighter regions raised the malignancy probability most "
            f"(coarse: {grid} at {self.heatmap.shape[0]} px)."
        )

    @property
    def triage_probabilities_note(self) -> str | None:
        """Why some triage groups are null (``None`` when every group has a probability)."""
        unmeasured = [group for group, value in self.triage_probabilities.items() if value is None]
        if not unmeasured:
            return None
        return (
            f"{', '.join(unmeasured)}: null because the model has no class for them (it was never trained on such "
            "images), so it cannot give their probability."
        )

    def to_dict(self) -> dict:
        """The JSON shape of ``skintriage predict --json`` and the demo's ``/triage`` endpoint."""
        return {
            "file": self.file,
            "probabilities": self.probabilities,
            "triage_probabilities": self.triage_probabilities,
            "triage_probabilities_note": self.triage_probabilities_note,
            "malignancy_probability": self.malignancy_probability,
            "class_call": {"code": self.class_call, "name": DIAGNOSES[self.class_call].name},
            "uncertainty": None if self.uncertainty is None else self.uncertainty.score,
            "uncertainty_detail": None if self.uncertainty is None else self.uncertainty.to_dict(),
            "referral": {
                "level": self.referral.level,
                "meaning": self.referral.meaning,
                "reasons": [reason.text for reason in self.referral.reasons],
                "rules": [reason.rule for reason in self.referral.reasons],
            },
            "differential": [
                {"condition": d.condition, "name": d.name, "why": d.why, "workup": d.workup}
                for d in self.referral.differential
            ],
            "guidance_topics": self.guidance_topics,
            "acquisition": None if self.acquisition is None else self.acquisition.to_dict(),
            "variant": self.variant,
            "saliency": self.saliency_note,
            "limits": self.referral.limits,
            "disclaimer": DISCLAIMER,
        }


@dataclass(frozen=True)
class FileError:
    """A file that could not be predicted, and why (the batch carries on with the others)."""

    file: str
    error: str

    def to_dict(self) -> dict:
        return {"file": self.file, "error": self.error}


class Predictor:
    def __init__(self, bundle: Bundle, *, backend: BackendChoice | None = None):
        self.backend_choice = backend or BackendChoice(REFERENCE, "no variant was chosen (PyTorch float32)")
        # the calibration, thresholds and gates fitted at the chosen variant's precision (same model object)
        bundle = calibrated_at(bundle, self.backend_choice.variant)
        self.bundle = bundle
        self.classes = bundle.classes
        self.preset = eval_preset(bundle)
        self.device = next(bundle.model.parameters()).device
        described = bundle.metadata.to_json_dict()  # the triage readers take model.json's plain form
        self.policy = ReferralPolicy.from_metadata(described)  # the pooled thresholds
        self.pooled_calibration = AcquisitionCalibration.from_dict(described["calibration"], kind="(pooled)")
        self.calibrations = acquisition_calibrations(described["calibration"])  # empty for older bundles
        self.policies = {kind: ReferralPolicy.from_metadata(described, acquisition=kind) for kind in self.calibrations}
        self.acquisition_classifier = AcquisitionClassifier.from_bundle(bundle)
        self.gate = (
            UncertaintyGate.from_bundle_parts(bundle.uncertainty_tensors, described["uncertainty"])
            if bundle.uncertainty_tensors is not None
            else None
        )
        self.prior = decision_prior(bundle)
        self.malignant_indices = malignant_indices(self.classes)

    @classmethod
    def load(
        cls, path: Path | str | None = None, *, device: str | torch.device = "cpu", variant: str = AUTO_VARIANT
    ) -> Predictor:
        """The bundled model by default (``skintriage/model/default``, package data).

        ``variant``: "auto" (the bundle's recorded default, PyTorch float32 with a warning where it cannot run)
        or a variant by name ("torch-float32", "onnx-int8", ...; an error if the bundle was not calibrated
        for it or its file is missing or changed; see :mod:`skintriage.inference.backend`).
        """
        bundle = load_bundle(DEFAULT_BUNDLE if path is None else path, device=device)
        bundle.model.to(memory_format=torch.channels_last)  # 12-16% faster on CPU (experiments/performance)
        return cls(bundle, backend=choose_backend(bundle, variant))

    @property
    def variant(self) -> str:
        """The variant of the plain forward pass, e.g. "onnx-int8" (``backend_choice.reason`` says why)."""
        return self.backend_choice.variant

    @property
    def backend(self) -> str:
        """The engine of the plain forward pass: "torch" or "onnxruntime"."""
        return self.backend_choice.engine

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) for a (N, 3, S, S) batch on the chosen variant (no gradients)."""
        if self.backend_choice.forward is not None:
            return self.backend_choice.forward(pixels)
        with torch.inference_mode():
            return forward(self.bundle.model, pixels)

    def input_tensor(self, image: Image.Image, *, artefact: str | None = None) -> torch.Tensor:
        """The (1, 3, S, S) tensor the model sees for a decoded RGB image (``artefact``: the one its source
        registers, e.g. "corner_watermark" for a DermNet photo, removed as in training)."""
        return self.preset(prepare_pixels(image, artefact=artefact)).unsqueeze(0).to(self.device)

    def predict(
        self,
        image: Image.Image,
        context: ClinicalContext | None = None,
        *,
        with_saliency: bool = False,
        file: str | None = None,
        acquisition: AcquisitionRequest = AUTO,
    ) -> Prediction:
        """``acquisition``: "dermoscopic" or "clinical" when the caller knows; "auto" lets the bundle's
        classifier read it from the image (the pooled calibration when the bundle has none)."""
        check_request(acquisition)
        pixels = self.input_tensor(image)
        heatmap, used = None, None
        plain = None if with_saliency and self.variant == REFERENCE else self.forward(pixels)
        if with_saliency:
            # the heatmap explains the malignancy probability at the image's own temperature, so the type comes
            # first: the caller's, or the classifier's reading of the plain forward pass
            if acquisition == AUTO and self.acquisition_classifier is not None:
                used = self.acquisitions((plain or self.forward(pixels))[1], acquisition)
            temperature = (used[0] if used else self._choose(acquisition, None)).temperature
            explained = saliency(  # the malignancy target localises lesions far better than the class
                self.bundle.model,
                pixels,
                target="malignancy",
                malignant_indices=self.malignant_indices,
                temperature=temperature,
            )
            heatmap = explained.heatmap
            if plain is None:  # PyTorch float32: the saliency pass computed the same logits and embedding
                plain = torch.from_numpy(explained.logits)[None], torch.from_numpy(explained.embedding)[None]
        # other variants: the probabilities come from the precision the thresholds were fitted at
        logits, embedding = plain
        used = used or self.acquisitions(embedding, acquisition)
        prediction = self._predictions(logits, embedding, [context], [file], [heatmap], used)[0]
        if with_saliency:
            prediction.saliency_grid = explained.grid
        return prediction

    def predict_batch(
        self,
        images: Sequence[Image.Image],
        context: ClinicalContext | None = None,
        *,
        files: Sequence[str] = (),
        artefact: str | None = None,
        acquisition: AcquisitionRequest = AUTO,
    ) -> list[Prediction]:
        """One forward pass for several images (no saliency); ``acquisition`` as in :meth:`predict`, for all."""
        check_request(acquisition)
        pixels = [self.input_tensor(image, artefact=artefact) for image in images]
        return self._predict_pixels(pixels, context, list(files) or [None] * len(images), acquisition)

    def predict_files(
        self,
        paths: Iterable[Path],
        context: ClinicalContext | None = None,
        *,
        batch_size: int = 32,
        acquisition: AcquisitionRequest = AUTO,
    ) -> Iterator[Prediction | FileError]:
        """Predictions for files in order; an unreadable file yields a :class:`FileError` and the rest go on.

        ``acquisition`` as in :meth:`predict`, for every file ("auto": the classifier's reading of each).
        """
        check_request(acquisition)
        return self._predict_files(paths, context, batch_size, acquisition)

    def _predict_files(
        self, paths: Iterable[Path], context: ClinicalContext | None, batch_size: int, acquisition: str
    ) -> Iterator[Prediction | FileError]:
        batch: list[tuple[str, torch.Tensor]] = []

        def prepared(path: Path) -> torch.Tensor:  # in a background thread, while the model runs a batch
            return self.input_tensor(decode_image(path, name=str(path)))

        def flush() -> Iterator[Prediction]:
            if batch:
                yield from self._predict_pixels([t for _, t in batch], context, [f for f, _ in batch], acquisition)
                batch.clear()

        for path, pixels in prefetch_decoded(paths, decode=prepared, ahead=2 * batch_size):
            try:
                batch.append((str(path), pixels.result()))
            except (ImageDecodeError, OSError) as error:
                yield from flush()
                yield FileError(str(path), str(error))
                continue
            if len(batch) >= batch_size:
                yield from flush()
        yield from flush()

    def overlay(self, image: Image.Image, heatmap: np.ndarray) -> Image.Image:
        """The heatmap drawn over the part of ``image`` the model saw."""
        crop_fraction = self.bundle.metadata.preprocessing.crop_fraction
        return overlay(image.convert("RGB"), heatmap, crop_fraction=crop_fraction)

    def sees_whole(self, size: tuple[int, int]) -> bool:
        """Whether the model analyses all of an image of PIL ``size`` (False: only its central square)."""
        preprocessing = self.bundle.metadata.preprocessing
        left, top, right, bottom = crop_box(
            size, input_size=preprocessing.input_size, crop_fraction=preprocessing.crop_fraction
        )
        width, height = size
        return left <= 0.5 and top <= 0.5 and right >= width - 0.5 and bottom >= height - 0.5

    def decide(
        self,
        probabilities: dict[str, float],
        uncertainty: Uncertainty | None,
        context: ClinicalContext | None,
        *,
        acquisition: AcquisitionUsed | None = None,
    ) -> ReferralDecision:
        """The referral engine with the thresholds ``acquisition`` selected (``None``: the pooled ones)."""
        return decide(probabilities, uncertainty, context, self.policy_for(acquisition))

    def policy_for(self, acquisition: AcquisitionUsed | None) -> ReferralPolicy:
        """The thresholds of the calibration an image's acquisition type selected (the pooled ones by default)."""
        return self.policy if acquisition is None else self.policies.get(acquisition.calibration, self.policy)

    def acquisitions(self, embedding: torch.Tensor | np.ndarray, requested: str) -> list[AcquisitionUsed]:
        """Per row of ``embedding``: the requested type, or the classifier's reading ("auto"), and its calibration.

        The classifier runs whenever the bundle has one, so that a caller's type is reported with the
        model's probability for it.
        """
        check_request(requested)
        if self.acquisition_classifier is None:
            predicted = [None] * len(embedding)
        else:
            rows = embedding.float().cpu().numpy() if isinstance(embedding, torch.Tensor) else np.asarray(embedding)
            predicted = self.acquisition_classifier.predict_many(rows)
        return [self._choose(requested, p) for p in predicted]

    def predictions_for_outputs(self, logits: np.ndarray, embedding: np.ndarray) -> list[Prediction]:
        """Predictions (no context, no saliency, acquisition "auto") for outputs computed elsewhere: a whole
        validation set's, to compare the referral levels of two variants image by image."""
        n = len(logits)
        return self._predictions(
            torch.as_tensor(logits), torch.as_tensor(embedding), [None] * n, [None] * n, [None] * n
        )

    # ------------------------------------------------------------------------------------------------

    def _choose(self, requested: str, predicted: tuple[str, float] | None) -> AcquisitionUsed:
        return choose_acquisition(requested, predicted, self.calibrations, self.pooled_calibration)

    def _predict_pixels(
        self, pixels: list[torch.Tensor], context: ClinicalContext | None, files: list[str | None], acquisition: str
    ) -> list[Prediction]:
        logits, embedding = self.forward(torch.cat(pixels))
        used = self.acquisitions(embedding, acquisition)
        return self._predictions(logits, embedding, [context] * len(files), files, [None] * len(files), used)

    def _class_call(self, probabilities: np.ndarray) -> str:
        return self.classes[int(np.argmax(decision_probabilities(probabilities[None], self.prior)[0]))]

    def _predictions(self, logits, embedding, contexts, files, heatmaps, acquisitions=None) -> list[Prediction]:
        """``acquisitions``: one :class:`AcquisitionUsed` per row (default: "auto" for every row)."""
        acquisitions = acquisitions or self.acquisitions(embedding, AUTO)
        temperatures = [used.temperature for used in acquisitions]
        probabilities = probabilities_at_temperatures(logits.float().cpu().numpy(), temperatures)
        uncertainties = (
            self.gate.assess(embedding.float().cpu().numpy(), probabilities)
            if self.gate is not None
            else [None] * len(probabilities)
        )
        out = []
        for p, uncertainty, context, file, heatmap, used in zip(
            probabilities, uncertainties, contexts, files, heatmaps, acquisitions, strict=True
        ):
            named = {c: float(v) for c, v in zip(self.classes, p, strict=True)}
            groups: dict[str, float | None] = {group.value: None for group in TriageGroup}  # None: no such class
            for code, value in named.items():
                group = DIAGNOSES[code].group.value
                groups[group] = (groups[group] or 0.0) + value
            decision = self.decide(named, uncertainty, context, acquisition=used)
            out.append(
                Prediction(
                    file=file,
                    probabilities=named,
                    triage_probabilities=groups,
                    malignancy_probability=malignancy_probability(named),
                    class_call=self._class_call(p),
                    uncertainty=uncertainty,
                    referral=decision,
                    guidance_topics=topics_for_differential(d.workup for d in decision.differential),
                    heatmap=heatmap,
                    acquisition=used,
                    variant=self.variant,
                )
            )
        return out
