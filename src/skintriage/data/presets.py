"""Image transforms for training and evaluation, as small preset classes (after torchvision's
``references/classification/presets.py``), built on albumentations 2.x.

A preset takes an RGB ``uint8`` array of shape (H, W, 3) of any size (or an RGB ``PIL.Image``) and
returns a normalised ``float32`` tensor of shape (3, input_size, input_size)::

    train = ClassificationPresetTrain(input_size=224, mask_watermark=True)
    tensor = train(np.asarray(manifest.read_image(location)))

Decisions:

* **Normalisation** is a :class:`Normalization` record passed to each preset: the convention of the
  backbone's pretrained weights (the model registry says which; ImageNet statistics,
  :data:`IMAGENET_NORMALIZATION`, by default; TensorFlow's ``(x - 127) / 128`` for EfficientNet-Lite).
  A bundle records the one it was trained with, and evaluation reads it from there.
* **Geometry.** Skin lesions have no canonical orientation, so horizontal and vertical flips and 90°
  rotations are label-preserving. ``RandomResizedCrop`` uses ``scale=(0.35, 1)`` rather than
  ImageNet's ``(0.08, 1)``: a lesion usually fills the middle of the picture and an 8 % crop would
  often cut it out, leaving a crop of healthy skin labelled "melanoma".
* **Colour** is diagnostic (the blue-grey of melanoma, the red of vascular lesions), so hue jitter is
  small (±0.02) while brightness, contrast, saturation and gamma vary more, as lighting, cameras and
  skin tones do.
* **Blur and noise**, mild and rare, stand in for phone cameras and out-of-focus clinical photos.
* **Circular vignette** (:class:`CircularVignette`): dermoscopes often leave a black circular border.
  Adding one at random to training images keeps the model from using "black corners" as a cue for
  "dermoscopic image" and hence for the diagnoses common in dermoscopic datasets.
* **Watermark** (:class:`MaskWatermark`, ``mask_watermark=True``): DermNet photos (400 px on the long
  side) carry the DermNet logo in the bottom-left corner. The bottom-left 25 % x 25 % is filled with
  the image's median colour *first*, before any flip or crop moves it, in the train and the eval
  preset alike, so the model never sees the logo and cannot learn "logo -> DermNet -> its diagnoses".
* **Evaluation** resizes the short side to ``input_size / crop_fraction`` and takes the centre crop;
  ``crop_fraction=1.0`` (the default) keeps the whole short side, so the lesion is never cut.
* **Randomness.** A preset seeds one numpy and one Python generator shared by all its transforms
  (``seed=None``: fresh entropy). ``A.Compose(seed=...)`` is *not* used: it gives every transform its
  own generator with the same seed, so e.g. the horizontal and vertical flips always fire together.
  In a DataLoader worker the preset reseeds itself from ``torch.utils.data.get_worker_info().seed``
  on first use, so workers do not repeat each other's augmentations (each worker receives a copy of
  the same generator state) and runs are reproducible under ``torch.manual_seed``.
* Presets are plain module-level classes holding albumentations objects: they pickle (DataLoader
  workers with the ``spawn`` start method).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x / 255 - mean) / std``: the input convention a backbone's weights were trained with."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, value: Mapping[str, Sequence[float]]) -> Normalization:
        """From a bundle's ``preprocessing.normalization`` (``{"mean": [...], "std": [...]}``)."""
        return cls(mean=tuple(float(v) for v in value["mean"]), std=tuple(float(v) for v in value["std"]))


IMAGENET_NORMALIZATION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

WATERMARK_CORNER = (0.25, 0.25)  # (height fraction, width fraction) of the bottom-left corner


class MaskWatermark(A.ImageOnlyTransform):
    """Fill the bottom-left corner (``fraction`` = (height, width) of the image) with its median colour.

    Deterministic; meant to run first, on the image as it came, where the watermark is.
    """

    def __init__(self, fraction: tuple[float, float] = WATERMARK_CORNER, p: float = 1.0):
        super().__init__(p=p)
        if not all(0.0 < f <= 1.0 for f in fraction):
            raise ValueError(f"watermark fraction {fraction} must be two numbers in (0, 1]")
        self.fraction = tuple(fraction)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return mask_corner(img, self.fraction)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("fraction",)


def mask_corner(image: np.ndarray, fraction: tuple[float, float] = WATERMARK_CORNER) -> np.ndarray:
    """A copy of ``image`` (H, W, C) with the bottom-left corner filled with the per-channel median."""
    height, width = image.shape[:2]
    rows = max(1, round(height * fraction[0]))
    cols = max(1, round(width * fraction[1]))
    median = np.median(image.reshape(-1, image.shape[2] if image.ndim == 3 else 1), axis=0)
    out = image.copy()
    out[height - rows :, :cols] = median.round().astype(image.dtype).reshape(-1)
    return out


# A caption-bar row is mostly light, unsaturated grey: among the 300 SD-198 lesion photos the detected bar
# is 4 to 48 rows (median 5% of the height, 15% in portrait photos). It also fires on light backgrounds:
# 0 of 170 MED-NODE photos, 3 of 502 DermNet extra, 132 of 1,084 Fitzpatrick17k (up to 54 rows), which is
# why it is applied only to the source that registers the artefact.
CAPTION_BAR_GREY_SPREAD = 14  # max - min over RGB
CAPTION_BAR_MIN_BRIGHTNESS = 170
CAPTION_BAR_ROW_SHARE = 0.6  # share of a row's pixels that must be bar grey
CAPTION_BAR_MAX_HEIGHT = 0.3  # never crop more than this share of the height


def caption_bar_rows(image: np.ndarray) -> int:
    """How many rows at the bottom of ``image`` (H, W, 3) form a light grey caption bar (0 if none)."""
    pixels = image.astype(np.int16)
    grey = (pixels.max(axis=2) - pixels.min(axis=2) < CAPTION_BAR_GREY_SPREAD) & (
        pixels.mean(axis=2) > CAPTION_BAR_MIN_BRIGHTNESS
    )
    bar_like = grey.mean(axis=1) >= CAPTION_BAR_ROW_SHARE
    height = image.shape[0]
    rows = 0
    while rows < int(height * CAPTION_BAR_MAX_HEIGHT) and bar_like[height - 1 - rows]:
        rows += 1
    return rows


def crop_caption_bar(image: np.ndarray) -> np.ndarray:
    """``image`` without its bottom caption bar (DermQuest/SD-198: atlas name and image address)."""
    rows = caption_bar_rows(image)
    return image[: image.shape[0] - rows] if rows else image


# Per-source acquisition artefacts a model could learn as a shortcut, by the name a Source registers.
ARTEFACT_REMOVERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "corner_watermark": mask_corner,  # DermNet NZ: logo in the bottom-left corner
    "caption_bar": crop_caption_bar,  # SD-198 / DermQuest: caption bar along the bottom edge
}


def remove_artefact(image: np.ndarray, artefact: str | None) -> np.ndarray:
    """``image`` with the named artefact removed (``None``: unchanged)."""
    if artefact is None:
        return image
    try:
        return ARTEFACT_REMOVERS[artefact](image)
    except KeyError:
        raise ValueError(f"unknown image artefact {artefact!r}; known: {', '.join(ARTEFACT_REMOVERS)}") from None


class CircularVignette(A.ImageOnlyTransform):
    """Darken everything outside a circle, as a dermoscope's field of view does.

    ``radius`` is a fraction of the half-diagonal (1.0 passes through the corners, about 0.71 touches
    the sides of a square image); ``softness`` is the width of the dark-to-bright ramp as a fraction of
    the half-diagonal; ``shift`` moves the centre by up to that fraction of the width/height; outside
    the circle the image is scaled by a factor drawn from ``floor`` (0 = black).
    """

    def __init__(
        self,
        radius: tuple[float, float] = (0.6, 0.9),
        softness: tuple[float, float] = (0.02, 0.15),
        shift: float = 0.05,
        floor: tuple[float, float] = (0.0, 0.15),
        p: float = 0.5,
    ):
        super().__init__(p=p)
        for label, (low, high) in (("radius", radius), ("softness", softness), ("floor", floor)):
            if not 0.0 <= low <= high:
                raise ValueError(f"{label} range {(low, high)} must satisfy 0 <= low <= high")
        self.radius = tuple(radius)
        self.softness = tuple(softness)
        self.shift = shift
        self.floor = tuple(floor)

    def get_params(self) -> dict[str, Any]:
        return {
            "radius": self.py_random.uniform(*self.radius),
            "softness": self.py_random.uniform(*self.softness),
            "dx": self.py_random.uniform(-self.shift, self.shift),
            "dy": self.py_random.uniform(-self.shift, self.shift),
            "floor": self.py_random.uniform(*self.floor),
        }

    def apply(
        self, img: np.ndarray, radius: float, softness: float, dx: float, dy: float, floor: float, **params: Any
    ) -> np.ndarray:
        height, width = img.shape[:2]
        half_diagonal = 0.5 * float(np.hypot(height, width))
        ys = np.arange(height, dtype=np.float32) - (height - 1) / 2 - dy * height
        xs = np.arange(width, dtype=np.float32) - (width - 1) / 2 - dx * width
        distance = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) / half_diagonal
        ramp = np.clip((radius - distance) / max(softness, 1e-6), 0.0, 1.0)
        gain = floor + (1.0 - floor) * ramp
        if img.ndim == 3:
            gain = gain[:, :, None]
        out = img.astype(np.float32) * gain
        if img.dtype == np.uint8:
            return np.clip(out + 0.5, 0, 255).astype(np.uint8)
        return out.astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("radius", "softness", "shift", "floor")


class _Preset:
    """Shared call logic: input checks, seeding, per-worker reseeding."""

    transform: A.Compose

    def reseed(self, seed: int | None) -> None:
        """Restart the random stream; training reseeds once per epoch so a resumed run repeats an uninterrupted one."""
        self.seed = seed
        self._worker_seed: int | None = None
        # One shared stream for all transforms; see the module docstring for why not Compose(seed=).
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and self._worker_seed != worker.seed:
            self._worker_seed = worker.seed
            seed = worker.seed % 2**63
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return self.transform(image=as_rgb_array(image))["image"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """Accept an RGB ``PIL.Image`` or an (H, W, 3) ``uint8`` array; anything else is a clear error."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got shape {shape} and dtype {dtype}")
    return np.ascontiguousarray(image)


class ClassificationPresetTrain(_Preset):
    """Training augmentation; see the module docstring for the reasoning behind each step."""

    def __init__(
        self,
        *,
        input_size: int,
        scale: tuple[float, float] = (0.35, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.5,
        rotate90_prob: float = 0.75,
        color_prob: float = 0.8,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.02,
        gamma_prob: float = 0.3,
        blur_prob: float = 0.1,
        noise_prob: float = 0.1,
        vignette_prob: float = 0.2,
        mask_watermark: bool = False,
        normalization: Normalization = IMAGENET_NORMALIZATION,
        seed: int | None = None,
    ):
        self.input_size = input_size
        self.mask_watermark = mask_watermark
        steps: list[A.BasicTransform | A.BaseCompose] = []
        if mask_watermark:
            steps.append(MaskWatermark(p=1.0))
        steps += [
            A.RandomResizedCrop(size=(input_size, input_size), scale=scale, ratio=ratio, area_for_downscale="image"),
            A.HorizontalFlip(p=hflip_prob),
            A.VerticalFlip(p=vflip_prob),
            A.RandomRotate90(p=rotate90_prob),  # when applied, picks 0, 90, 180 or 270 degrees
            A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=color_prob),
            A.RandomGamma(gamma_limit=(80, 120), p=gamma_prob),
            A.OneOf(
                [A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.5)), A.MotionBlur(blur_limit=(3, 5))],
                p=blur_prob,
            ),
            A.GaussNoise(std_range=(0.01, 0.04), p=noise_prob),
            CircularVignette(p=vignette_prob),
            A.Normalize(mean=normalization.mean, std=normalization.std, max_pixel_value=255.0),
            ToTensorV2(),
        ]
        self.transform = A.Compose(steps)
        self.reseed(seed)


class ClassificationPresetEval(_Preset):
    """Evaluation: (watermark mask), short side to ``input_size / crop_fraction``, centre crop, normalise."""

    def __init__(
        self,
        *,
        input_size: int,
        crop_fraction: float = 1.0,
        mask_watermark: bool = False,
        normalization: Normalization = IMAGENET_NORMALIZATION,
    ):
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], not {crop_fraction}")
        self.input_size = input_size
        self.mask_watermark = mask_watermark
        steps: list[A.BasicTransform] = []
        if mask_watermark:
            steps.append(MaskWatermark(p=1.0))
        steps += [
            A.SmallestMaxSize(max_size=round(input_size / crop_fraction), area_for_downscale="image"),
            A.CenterCrop(height=input_size, width=input_size),
            A.Normalize(mean=normalization.mean, std=normalization.std, max_pixel_value=255.0),
            ToTensorV2(),
        ]
        self.transform = A.Compose(steps)
        self.reseed(None)


def denormalize(tensor: torch.Tensor, normalization: Normalization = IMAGENET_NORMALIZATION) -> torch.Tensor:
    """Undo ``normalization`` on a (..., 3, H, W) tensor, giving values in about 0..1 (for display)."""
    mean = torch.tensor(normalization.mean, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(normalization.std, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    return tensor * std + mean
