"""The images the benchmarks run on: real ones when ``../shared/data`` is present, generated ones otherwise.

Timings depend on what is decoded (JPEG size, quality, content), so the suite uses the real data
whenever it can: the official ISIC 2018 test images (source ``isic2018_test``) for prediction and
HAM10000 images (source ``ham10000``) for training, both 224x224 JPEGs. Without the data (CI, a user's
machine) it writes JPEGs of the same size and quality with lesion-like content into a scratch folder,
so the suite still runs end to end; the report says which was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from skintriage.data.records import Manifest
from skintriage.data.sources import get_source

DATA_FOLDER = "ham10000_isic2018_224"  # holds both the HAM10000 images and the ISIC 2018 test set
GENERATED_SIDE = 224  # the real images' size, so decoding costs about the same
GENERATED_CLASSES = ("mel", "bcc", "nv", "bkl")


@dataclass(frozen=True)
class ImageSet:
    """Image files to predict, and where they came from (``isic2018_test`` or ``generated``)."""

    paths: list[Path]
    origin: str


@dataclass(frozen=True)
class TrainingImages:
    """A labelled manifest to train on, and where it came from (``ham10000`` or ``generated``)."""

    manifest: Manifest
    origin: str


def real_root(data_root: Path | None) -> Path | None:
    """The shared data folder holding HAM10000 and the ISIC 2018 test set, or ``None`` when it is absent."""
    if data_root is None:
        return None
    root = Path(data_root) / DATA_FOLDER
    return root if root.is_dir() else None


def lesion_jpeg(
    path: Path, *, seed: int, side: int = GENERATED_SIDE, tint: tuple[int, int, int] = (150, 100, 80)
) -> Path:
    """Write a skin-coloured JPEG with a dark blob and sensor-like noise (JPEG-compresses like a photo, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side
    cy, cx, radius = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.3)
    blob = np.clip(1.0 - np.hypot(ys - cy, xs - cx) / radius, 0.0, 1.0)[..., None]
    skin = np.array([220, 170, 140], dtype=np.float32)
    pixels = skin * (1 - 0.6 * blob) + np.array(tint, dtype=np.float32) * 0.6 * blob
    pixels += rng.normal(0, 8, size=pixels.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def inference_images(*, count: int, data_root: Path | None, scratch: Path) -> ImageSet:
    """``count`` JPEG files: the first ISIC 2018 test images (sorted by id), or generated ones in ``scratch``."""
    root = real_root(data_root)
    if root is not None:
        manifest = get_source("isic2018_test").load(root).with_images()
        images = sorted(manifest.frame["image"])[:count]
        if len(images) >= count:
            return ImageSet([root / image for image in images], "isic2018_test")
    folder = scratch / "generated_inference"
    return ImageSet([lesion_jpeg(folder / f"image_{i:04d}.jpg", seed=i) for i in range(count)], "generated")


def training_images(*, count: int, data_root: Path | None, scratch: Path, seed: int = 0) -> TrainingImages:
    """``count`` labelled images: a seeded random sample of HAM10000, or generated class folders in ``scratch``.

    The sample is drawn from all of HAM10000 (not the project's training split, which needs the slow
    near-duplicate hashing of every image): for timing, any HAM10000 image is as good as another.
    """
    root = real_root(data_root)
    if root is not None:
        manifest = get_source("ham10000").load(root).with_images()
        if len(manifest) >= count:
            frame = manifest.frame.sample(n=count, random_state=seed).reset_index(drop=True)
            return TrainingImages(Manifest(frame, manifest.root), "ham10000")
    folder = scratch / "generated_training"
    tints = {"mel": (60, 40, 40), "bcc": (200, 120, 140), "nv": (140, 90, 60), "bkl": (170, 140, 100)}
    for i in range(count):
        label = GENERATED_CLASSES[i % len(GENERATED_CLASSES)]
        path = folder / label / f"{label}_{i:04d}.jpg"
        if not path.exists():
            lesion_jpeg(path, seed=10_000 + i, tint=tints[label])
    return TrainingImages(get_source("folder").load(folder), "generated")
