"""Saliency maps: where in the image the classifier found its evidence (Grad-CAM), and drawing them.

Grad-CAM (Selvaraju et al., 2017) weights each channel ``k`` of the last convolutional block's output
``A`` by the spatial mean of ``d score / d A_k`` and keeps the positive part of the weighted sum:
the regions whose activations would *raise* the score. It is coarse (the bundled ResNet-18 at 128 px
has a 4x4 last block), but it is cheap, needs no extra model, and passes the model-randomisation
sanity check that several gradient methods fail (Adebayo et al., 2018; see ``tests/inference/test_explain.py``).

Decisions:

* **No module hooks.** The demo serves concurrent requests from one shared model; a forward/backward
  hook stores activations on the module, where two requests would overwrite each other's. Instead
  the forward pass is split with :meth:`~skintriage.model.registry.SkinClassifier.feature_maps` and
  :meth:`~skintriage.model.registry.SkinClassifier.head_inputs`, and ``torch.autograd.grad`` is taken with respect to the
  maps only. Grad and inference modes are thread-local in PyTorch, so nothing here is shared state.
* **No backward pass through the backbone.** Grad-CAM needs gradients with respect to the maps, not
  the pixels, so the backbone runs under ``no_grad`` and only the small head is differentiated. The
  parameters are never touched: their ``requires_grad`` flags are left as they are (changing them
  would race too) and ``param.grad`` stays ``None`` because only the maps are passed to
  ``autograd.grad``.
* **Callable from inference code.** The caller may hold ``torch.inference_mode()`` or ``no_grad``;
  both are switched off locally, and an inference-mode input tensor is cloned into a normal one.
* **The model must be in eval mode** (otherwise :class:`ValueError`): in training mode BatchNorm
  would normalise with the single image's statistics and update its running averages, and switching
  the shared model to eval here would race with other requests.
* **Targets.** ``target="class"`` explains one class's logit (the argmax by default), as in the
  paper; the logit rather than the probability, because a probability's gradient also carries
  "evidence against every other class". ``target="malignancy"`` explains the referral instead: the
  log of the summed (temperature-scaled) softmax probability of the malignant classes, i.e.
  ``logsumexp(z_malignant / T) - logsumexp(z / T)``: what raises the malignancy score.
* **Normalisation.** The map is ReLU'd, upsampled bilinearly to the input size and divided by its
  maximum, so 0 means "no positive evidence" in every map (min-max scaling would instead paint the
  weakest evidence as zero). A map with no positive evidence stays all zero, with no NaN.
* **Drawing.** The model sees a centre crop of the image (short side resized to
  ``input_size / crop_fraction``, then the central ``input_size`` square; see
  :class:`~skintriage.data.presets.ClassificationPresetEval`). :func:`overlay` maps the heatmap back
  onto the crop's footprint in the original image with exactly that geometry and leaves everything
  outside the crop uncoloured, so no colour is drawn where the model did not look.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from skintriage.model.registry import SkinClassifier

Target = Literal["class", "malignancy"]
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Saliency:
    """One explanation: the heatmap and the forward pass it came from (so the caller needs no second one).

    ``heatmap`` is (H, W) ``float32`` in [0, 1] at the input tensor's size; ``class_index`` is the class
    explained (``None`` for ``target="malignancy"``); ``logits`` are the model's raw (K,) logits for the
    image, before any temperature; ``embedding`` is the (D,) vector the head read (what the uncertainty
    gate scores); ``grid`` is the (rows, columns) of the feature map the heatmap was computed on, before
    it was upsampled: how coarse it really is.
    """

    heatmap: np.ndarray
    target: Target
    class_index: int | None
    logits: np.ndarray
    embedding: np.ndarray
    grid: tuple[int, int]


def saliency(
    model: nn.Module,
    images: torch.Tensor,
    *,
    target: Target = "class",
    class_index: int | None = None,
    malignant_indices: Sequence[int] | None = None,
    temperature: float = 1.0,
) -> Saliency:
    """Grad-CAM of one image (``images`` of shape (1, 3, H, W)) with the logits of the same forward pass.

    ``model`` is built by :func:`skintriage.model.registry.create_model` (a ``SkinClassifier``, which knows
    its head and where its feature maps are) and must be in eval mode. ``target="class"``: explain ``class_index`` (default:
    the argmax class). ``target="malignancy"``: explain ``log sum softmax(logits / temperature)`` over
    ``malignant_indices`` (``taxonomy.malignant_indices(bundle.classes)``, with the
    bundle's temperature), which is what the referral decision thresholds.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected one image as a (1, C, H, W) tensor, got {shape}")
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() once before explaining with it")
    if not isinstance(model, SkinClassifier):
        raise ValueError(f"the model was not built by skintriage.model.registry.create_model ({type(model).__name__})")
    head = model.head
    num_classes = head.out_features

    if target == "class":
        if malignant_indices is not None:
            raise ValueError("malignant_indices belongs to target='malignancy'")
        if class_index is not None and not 0 <= class_index < num_classes:
            raise ValueError(f"class_index {class_index} is out of range for {num_classes} classes")
    elif target == "malignancy":
        if class_index is not None:
            raise ValueError("class_index belongs to target='class'; target='malignancy' explains the malignant sum")
        malignant = _check_malignant(malignant_indices, num_classes)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
    else:
        raise ValueError(f"target must be 'class' or 'malignancy', not {target!r}")

    chosen: list[int] = []

    def score(logits: torch.Tensor) -> torch.Tensor:
        logits = logits[0].float()
        if target == "malignancy":
            scaled = logits / temperature
            return torch.logsumexp(scaled[malignant], 0) - torch.logsumexp(scaled, 0)
        index = int(logits.argmax()) if class_index is None else class_index
        chosen.append(index)
        return logits[index]

    embedded: list[torch.Tensor] = []

    def logits_from_maps(maps: torch.Tensor) -> torch.Tensor:
        embedding = model.head_inputs(maps)
        embedded.append(embedding.detach())
        return head(embedding)

    with torch.inference_mode(False):
        pixels = images.clone() if images.is_inference() else images
        with torch.no_grad():
            maps = model.feature_maps(pixels)
        heatmap, logits = _grad_cam_from_maps(maps, logits_from_maps, score, output_size=tuple(images.shape[-2:]))
    return Saliency(
        heatmap=heatmap,
        target=target,
        class_index=chosen[0] if chosen else None,
        logits=logits[0].float().cpu().numpy(),
        embedding=embedded[0][0].float().cpu().numpy(),
        grid=(int(maps.shape[-2]), int(maps.shape[-1])),
    )


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    *,
    target: Target = "class",
    class_index: int | None = None,
    malignant_indices: Sequence[int] | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """The (H, W) ``float32`` Grad-CAM heatmap in [0, 1] of one image; see :func:`saliency` for the arguments."""
    return saliency(
        model,
        images,
        target=target,
        class_index=class_index,
        malignant_indices=malignant_indices,
        temperature=temperature,
    ).heatmap


def _check_malignant(indices: Sequence[int] | None, num_classes: int) -> list[int]:
    if indices is None:
        raise ValueError("target='malignancy' needs malignant_indices (the malignant classes' output indices)")
    malignant = sorted({int(i) for i in indices})
    if not malignant:
        raise ValueError("malignant_indices is empty: there is no malignancy score to explain")
    if malignant[0] < 0 or malignant[-1] >= num_classes:
        raise ValueError(f"malignant_indices {list(indices)} are out of range for {num_classes} classes")
    if len(malignant) == num_classes:
        raise ValueError("every class is in malignant_indices: the malignancy score is constantly 1")
    return malignant


def _grad_cam_from_maps(
    maps: torch.Tensor,
    logits_fn: ScoreFn,
    score_fn: ScoreFn,
    *,
    output_size: tuple[int, int],
) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM from already computed (1, C, h, w) ``maps``: ``(heatmap, logits)``.

    ``logits_fn`` maps the feature maps to logits (the head), ``score_fn`` the logits to the scalar being
    explained. Only ``maps`` is differentiated; whatever parameters ``logits_fn`` uses get no ``.grad``.
    """
    maps = maps.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_fn(maps)
        (gradients,) = torch.autograd.grad(score_fn(logits), maps)
    with torch.no_grad():
        weights = gradients.float().mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1): alpha_k of the paper
        cam = F.relu((weights * maps.detach().float()).sum(dim=1, keepdim=True))
        if not torch.isfinite(cam).all():
            raise FloatingPointError("Grad-CAM produced non-finite values (non-finite activations or gradients)")
        cam = F.interpolate(cam, size=output_size, mode="bilinear", align_corners=False)[0, 0]
        peak = cam.max()
        cam = (cam / peak).clamp_(0.0, 1.0) if peak > 0 else torch.zeros_like(cam)
    return cam.cpu().numpy().astype(np.float32, copy=False), logits.detach()


# ---------------------------------------------------------------------------------------------------
# Drawing on the original image


COLORMAP = "inferno"  # the overlay's matplotlib colour map (the demo's legend draws the same one)
OUTSIDE_FADE = 0.6  # how far the overlay fades the pixels the model did not see towards FADE_GREY
FADE_GREY = 200.0


def crop_box(
    image_size: tuple[int, int], *, input_size: int, crop_fraction: float = 1.0
) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` in the original image's pixel coordinates of what the model sees.

    ``image_size`` is PIL's ``(width, height)``. Replicates ``ClassificationPresetEval``: albumentations'
    ``SmallestMaxSize`` scales the short side to ``round(input_size / crop_fraction)`` (each side
    rounded), then ``CenterCrop`` keeps ``input_size`` pixels from offset ``(side - input_size) // 2``.
    Coordinates are continuous (pixel edges), so the box may cut through pixels.
    """
    width, height = image_size
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], not {crop_fraction}")
    target = round(input_size / crop_fraction)
    scale = target / min(width, height)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    if min(new_width, new_height) < input_size:
        raise ValueError(f"a {width}x{height} image resized to {new_width}x{new_height} is smaller than the crop")
    left, top = (new_width - input_size) // 2, (new_height - input_size) // 2
    sx, sy = width / new_width, height / new_height  # the effective scale of each axis after rounding
    return left * sx, top * sy, (left + input_size) * sx, (top + input_size) * sy


def heatmap_on_image(
    heatmap: np.ndarray, image_size: tuple[int, int], *, crop_fraction: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The heatmap (S, S) of a model input resampled onto the original image: ``(values, inside)``.

    Both are (height, width) arrays for PIL's ``image_size = (width, height)``: ``values`` ``float32`` in
    [0, 1] (bilinear, pixel centres mapped through :func:`crop_box`) and ``inside`` a boolean mask of
    the pixels whose centre lies within the crop the model saw; ``values`` is 0 outside it.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.shape[0] != heatmap.shape[1]:
        raise ValueError(f"expected a square (S, S) heatmap of the model input, got shape {heatmap.shape}")
    size = heatmap.shape[0]
    width, height = image_size
    left, top, right, bottom = crop_box(image_size, input_size=size, crop_fraction=crop_fraction)
    rows, row_inside = _resampling_matrix(height, top, bottom, size)
    cols, col_inside = _resampling_matrix(width, left, right, size)
    values = (rows @ heatmap @ cols.T).astype(np.float32)
    inside = row_inside[:, None] & col_inside[None, :]
    return np.clip(values, 0.0, 1.0), inside


def _resampling_matrix(length: int, start: float, stop: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(length, size) bilinear weights taking ``size`` samples spread over [start, stop) to pixel centres.

    Rows of pixels outside [start, stop) are zero. Same convention as ``align_corners=False``: sample
    ``i`` sits at the centre of its cell, and pixels beyond the outermost centres take the edge value.
    """
    centres = np.arange(length, dtype=np.float64) + 0.5
    position = (centres - start) / (stop - start) * size - 0.5  # in heatmap sample units
    inside = (centres >= start) & (centres < stop)
    position = np.clip(position, 0.0, size - 1.0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    frac = position - low
    matrix = np.zeros((length, size), dtype=np.float32)
    index = np.arange(length)
    np.add.at(matrix, (index, low), 1.0 - frac)
    np.add.at(matrix, (index, high), frac)
    matrix[~inside] = 0.0
    return matrix, inside


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    *,
    crop_fraction: float = 1.0,
    alpha: float = 0.6,
    colormap: str = COLORMAP,
    outside_fade: float = OUTSIDE_FADE,
) -> Image.Image:
    """``image`` (the one given to the predictor) with the heatmap over the part the model saw, the rest faded.

    ``heatmap`` is the (S, S) map of the model input (:func:`grad_cam`); ``crop_fraction`` is the eval
    preset's (``bundle.metadata.preprocessing.crop_fraction``). Inside the crop each pixel becomes
    ``(1 - w) * image + w * colormap(heat)`` with ``w = alpha * heat``: a region that raised nothing keeps
    its own colours (an all-zero map leaves the crop as it was, rather than darkening it), a hot spot takes
    the colour map's bright end. Outside the crop, which the model never saw, pixels are faded towards grey
    by ``outside_fade`` so that nobody reads an unanalysed strip as highlighted. Returns an RGB image of the
    same size as ``image``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    if not 0.0 <= outside_fade <= 1.0:
        raise ValueError(f"outside_fade must be in [0, 1], not {outside_fade}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    values, inside = heatmap_on_image(heatmap, image.size, crop_fraction=crop_fraction)
    lut = (matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.float32)
    colours = lut[np.rint(values * 255.0).astype(np.int64)]
    weight = (alpha * values)[:, :, None]
    faded = (1.0 - outside_fade) * rgb + outside_fade * FADE_GREY
    blended = np.where(inside[:, :, None], (1.0 - weight) * rgb + weight * colours, faded)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
