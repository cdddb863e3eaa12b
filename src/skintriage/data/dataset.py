"""A torch ``Dataset`` over a :class:`~skintriage.data.records.Manifest`.

Each item is ``(image, label, row)``: the transformed image, the index of the row's canonical
diagnosis in ``class_names``, and the row's position in ``manifest.frame`` (so that predictions can be
joined back to the manifest: image id, source, triage group, split, ...).

Images are decoded with ``manifest.read_image`` (the project's one safe decoder: EXIF orientation,
any mode to RGB, clear errors) and handed to the transform as an (H, W, 3) ``uint8`` array.

Two per-image steps happen before the transform, because they depend on the row, not on the epoch:

* rows of a source in ``mask_watermark_sources`` lose the artefact that source registers
  (:attr:`~skintriage.data.sources.registry.Source.artefact`: DermNet's corner watermark is filled,
  SD-198's caption bar is cropped off; :func:`~skintriage.data.presets.remove_artefact`), so one
  dataset can mix them with dermoscopic images whose corner holds real skin;
* with ``cache_side``, each image is decoded once, its short side resized to ``cache_side`` and the
  result kept in memory. On a 2-core machine JPEG decoding of full-size images costs as much as a
  small network's forward pass; a 160 px cache of 7,000 images is about 0.6 GB. The cache fills
  lazily, so it persists across epochs only with ``num_workers=0`` (each worker has its own copy).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from skintriage.data.presets import remove_artefact
from skintriage.data.records import Manifest
from skintriage.data.sources import get_source
from skintriage.data.taxonomy import DIAGNOSES

Transform = Callable[[np.ndarray], Any]


class ManifestDataset(Dataset):
    """Images and diagnosis labels of a manifest, for ``torch.utils.data.DataLoader``.

    ``class_names`` lists canonical diagnosis codes (``skintriage.data.taxonomy.DIAGNOSES``) in the order of
    the model's outputs. Every row's diagnosis must be one of them; a row that is not is an error at
    construction, not a crash hours into an epoch (filter the manifest first to drop classes on
    purpose), unless ``unknown_label`` is given (e.g. -1): evaluation predicts such rows too, because
    their referral can be scored from the triage group even though the model has no class for them. Rows whose image is missing (``manifest.missing_images``) are an error too; use
    ``manifest.with_images()``.

    ``transform`` receives an (H, W, 3) ``uint8`` RGB array (e.g. a preset from
    :mod:`skintriage.data.presets`); ``None`` returns that array as a (3, H, W) ``uint8`` tensor.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        transform: Transform | None,
        class_names: Sequence[str],
        mask_watermark_sources: Collection[str] = (),
        cache_side: int | None = None,
        unknown_label: int | None = None,
    ):
        class_names = list(class_names)
        if not class_names:
            raise ValueError("class_names is empty")
        duplicated = sorted({name for name in class_names if class_names.count(name) > 1})
        if duplicated:
            raise ValueError(f"class_names lists {', '.join(map(repr, duplicated))} more than once")
        unknown_names = [name for name in class_names if name not in DIAGNOSES]
        if unknown_names:
            raise ValueError(
                f"class_names {unknown_names} are not canonical diagnoses; choose from {', '.join(DIAGNOSES)}"
            )
        if manifest.missing_images:
            raise ValueError(
                f"the manifest has {len(manifest.missing_images)} rows whose image is missing or unreadable "
                f"(e.g. {manifest.missing_images[0]!r}); use manifest.with_images() to drop them"
            )
        frame = manifest.frame
        diagnoses = frame["diagnosis"].astype(str)
        outside = diagnoses[~diagnoses.isin(class_names)].value_counts()
        if len(outside) and unknown_label is None:
            counts = ", ".join(f"{name!r} ({count} rows)" for name, count in outside.items())
            raise ValueError(
                f"{int(outside.sum())} of {len(frame)} manifest rows have a diagnosis that is not in class_names "
                f"{class_names}: {counts}; add it to class_names or filter those rows out first"
            )
        self.manifest = manifest
        self.transform = transform
        self.class_names = class_names
        index = {name: i for i, name in enumerate(class_names)}
        self.labels = np.array([index.get(name, unknown_label) for name in diagnoses], dtype=np.int64)
        self.locations = frame["image"].tolist()
        masked = set(mask_watermark_sources)
        self.artefacts = [get_source(source).artefact if source in masked else None for source in frame["source"]]
        self.cache_side = cache_side
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> tuple[Any, int, int]:
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} out of range for a dataset of {len(self)} images")
        row = row % len(self)
        pixels = self.pixels(row)
        if self.transform is None:
            image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        else:
            image = self.transform(pixels)
        return image, int(self.labels[row]), row

    def pixels(self, row: int) -> np.ndarray:
        """The row's image as an (H, W, 3) ``uint8`` array, artefact removed and cache-resized as configured."""
        if row in self._cache:
            return self._cache[row]
        pixels = prepare_pixels(
            self.manifest.read_image(self.locations[row]), artefact=self.artefacts[row], side=self.cache_side
        )
        if self.cache_side is not None:
            self._cache[row] = pixels
        return pixels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        """Number of images of each class, in ``class_names`` order (zeros included)."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def class_weights(self, power: float = 1.0) -> torch.Tensor:
        """Per-class loss weights, inverse to class frequency, for ``CrossEntropyLoss(weight=...)``.

        ``weight[c] = n_c ** -power``, scaled so that the *average weight per image* is 1 (for
        ``power=1`` this is scikit-learn's "balanced": ``N / (K * n_c)``), so the loss keeps its usual
        magnitude and the learning rate need not change. ``power=0.5`` (inverse square root) is a
        milder correction for severe imbalance. A class with no images gets weight 0 (it never
        appears as a target, so its weight has no effect).
        """
        counts = self.class_counts().astype(np.float64)
        raw = np.zeros_like(counts)
        present = counts > 0
        raw[present] = counts[present] ** -power
        raw *= counts.sum() / float((raw * counts).sum())
        return torch.tensor(raw, dtype=torch.float32)

    def sample_weights(self, power: float = 1.0) -> torch.Tensor:
        """Per-image sampling weights for ``WeightedRandomSampler``: ``n_{label} ** -power``.

        With ``power=1`` each class is drawn equally often (class-balanced sampling); ``power=0``
        is ordinary uniform sampling. Use either these *or* :meth:`class_weights`, not both, or the
        imbalance is corrected twice. Returned as float64, which the sampler expects.
        """
        counts = self.class_counts().astype(np.float64)
        return torch.tensor(counts[self.labels] ** -power, dtype=torch.float64)


def prepare_pixels(image: Image.Image, *, artefact: str | None, side: int | None = None) -> np.ndarray:
    """Decoded RGB image -> (H, W, 3) ``uint8``: the source's artefact removed (watermark corner filled or
    caption bar cropped, before resizing so that it is found at the size it was made), short side
    resized to ``side``."""
    if artefact is not None:
        image = Image.fromarray(remove_artefact(np.asarray(image.convert("RGB")), artefact))
    if side is not None and min(image.size) != side:
        scale = side / min(image.size)
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC
        )
    return np.asarray(image.convert("RGB"))
