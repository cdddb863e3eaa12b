"""Running a model: logits for a whole dataset, and calibrated probabilities for one image.

Both paths use the same preprocessing, read from the bundle (``preprocessing`` in ``model.json``):
:func:`~skintriage.data.dataset.prepare_pixels` (watermark corner filled for the sources trained that
way) followed by the evaluation preset (short side to ``input_size``, centre crop, normalisation).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from skintriage.calibration import probabilities_at_temperature
from skintriage.checkpoint import Bundle
from skintriage.data.dataset import ManifestDataset, prepare_pixels
from skintriage.data.presets import ClassificationPresetEval
from skintriage.data.records import Manifest


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "predicting",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logits, labels, rows)`` over a loader of ``(image, label, row)`` batches, in loader order."""
    model.eval()
    logits, labels, rows = [], [], []
    channels_last = torch.device(device).type == "cuda"
    for images, batch_labels, batch_rows in tqdm(loader, desc=description, leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits.append(model(images).float().cpu())
        labels.append(torch.as_tensor(batch_labels))
        rows.append(torch.as_tensor(batch_rows))
    if not logits:
        raise ValueError("nothing to predict: the dataset is empty")
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), torch.cat(rows).numpy()


def eval_preset(bundle: Bundle) -> ClassificationPresetEval:
    preprocessing = bundle.metadata["preprocessing"]
    return ClassificationPresetEval(
        input_size=int(preprocessing["input_size"]), crop_fraction=float(preprocessing.get("crop_fraction", 1.0))
    )


def bundle_dataset(bundle: Bundle, manifest: Manifest, *, unknown_label: int | None = None) -> ManifestDataset:
    """A dataset over ``manifest`` preprocessed as ``bundle`` was trained; rows whose diagnosis the model lacks
    get ``unknown_label`` (``None``: they are an error)."""
    return ManifestDataset(
        manifest,
        transform=eval_preset(bundle),
        class_names=bundle.classes,
        mask_watermark_sources=bundle.metadata["preprocessing"].get("mask_watermark_sources", []),
        unknown_label=unknown_label,
    )


def loader_for(dataset: ManifestDataset, *, batch_size: int = 64, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


class Predictor:
    """Calibrated class probabilities for single images, as the demo and ``skintriage predict`` need."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.preset = eval_preset(bundle)
        self.device = next(bundle.model.parameters()).device

    def input_tensor(self, image: Image.Image, *, mask_watermark: bool = False) -> torch.Tensor:
        """The (1, 3, S, S) tensor the model sees for a decoded RGB image."""
        return self.preset(prepare_pixels(image, mask_watermark=mask_watermark)).unsqueeze(0).to(self.device)

    @torch.inference_mode()
    def probabilities(self, image: Image.Image, *, mask_watermark: bool = False) -> np.ndarray:
        logits = self.bundle.model(self.input_tensor(image, mask_watermark=mask_watermark)).float().cpu().numpy()
        return probabilities_at_temperature(logits, self.bundle.temperature)[0]
