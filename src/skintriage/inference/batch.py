"""Running a model over a dataset: logits (and embeddings) in batches.

Datasets and :mod:`skintriage.inference.predictor` (single images) use the same preprocessing, read from the bundle (``preprocessing`` in ``model.json``):
:func:`~skintriage.data.dataset.prepare_pixels` (watermark corner filled for the sources trained that
way) followed by the evaluation preset (short side to ``input_size``, centre crop, normalisation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from skintriage.common.errors import InsufficientDataError
from skintriage.data.dataset import ManifestDataset
from skintriage.data.presets import ClassificationPresetEval, Normalization
from skintriage.data.records import Manifest
from skintriage.model.bundle import METADATA_FILE, Bundle, BundleError
from skintriage.model.registry import SkinClassifier


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Outputs:
    """What :func:`predict_outputs` collects, in loader order; ``embeddings`` only when asked for."""

    logits: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    embeddings: np.ndarray | None = None


def forward(model: SkinClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, embedding): one pass, split where the classification head reads its input."""
    embedding = model.head_inputs(model.feature_maps(images))
    return model.head(embedding), embedding


@torch.inference_mode()
def predict_outputs(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str = "cpu",
    embeddings: bool = False,
    progress: bool = False,
    description: str = "predicting",
    engine: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Outputs:
    """Logits (and optionally head-input embeddings) over a loader of ``(image, label, row)`` batches.

    ``engine``: another forward pass of the same network (pixels -> logits, embedding; an ONNX variant, a
    bfloat16 one; see :mod:`skintriage.inference.variants`) to run instead of ``model``'s.
    """
    model.eval()
    logits, labels, rows, embedded = [], [], [], []
    channels_last = torch.device(device).type == "cuda"
    for images, batch_labels, batch_rows in tqdm(loader, desc=description, leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if engine is not None:
            batch_logits, batch_embedding = engine(images)
            if embeddings:
                embedded.append(batch_embedding.float().cpu())
        elif embeddings:
            batch_logits, batch_embedding = forward(model, images)
            embedded.append(batch_embedding.float().cpu())
        else:
            batch_logits = model(images)
        logits.append(batch_logits.float().cpu())
        labels.append(torch.as_tensor(batch_labels))
        rows.append(torch.as_tensor(batch_rows))
    if not logits:
        raise InsufficientDataError("nothing to predict: the dataset is empty")
    return Outputs(
        torch.cat(logits).numpy(),
        torch.cat(labels).numpy(),
        torch.cat(rows).numpy(),
        torch.cat(embedded).numpy() if embeddings else None,
    )


def predict_logits(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "predicting",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logits, labels, rows)`` over a loader of ``(image, label, row)`` batches, in loader order."""
    outputs = predict_outputs(model, loader, device=device, progress=progress, description=description)
    return outputs.logits, outputs.labels, outputs.rows


def bundle_normalization(bundle: Bundle) -> Normalization:
    """The input normalisation the bundle was trained with (its backbone's pretrained-weight convention)."""
    normalization = bundle.metadata.preprocessing.normalization
    if normalization is None:
        raise BundleError(f"{bundle.path / METADATA_FILE} lacks the field preprocessing.normalization")
    return normalization.to_normalization()


def eval_preset(bundle: Bundle) -> ClassificationPresetEval:
    preprocessing = bundle.metadata.preprocessing
    return ClassificationPresetEval(
        input_size=preprocessing.input_size,
        crop_fraction=preprocessing.crop_fraction,
        normalization=bundle_normalization(bundle),
    )


def bundle_dataset(bundle: Bundle, manifest: Manifest, *, unknown_label: int | None = None) -> ManifestDataset:
    """A dataset over ``manifest`` preprocessed as ``bundle`` was trained; rows whose diagnosis the model lacks
    get ``unknown_label`` (``None``: they are an error)."""
    return ManifestDataset(
        manifest,
        transform=eval_preset(bundle),
        class_names=bundle.classes,
        mask_watermark_sources=bundle.metadata.preprocessing.mask_watermark_sources,
        unknown_label=unknown_label,
    )


def loader_for(dataset: ManifestDataset, *, batch_size: int = 64, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def decision_prior(bundle: Bundle) -> np.ndarray | None:
    """The training prior the class call divides by (``None``: the bundle's class call is the plain arg-max)."""
    decision = bundle.metadata.decision
    if decision is None or decision.rule != "class_balanced":
        return None
    return np.asarray(decision.training_prior)
