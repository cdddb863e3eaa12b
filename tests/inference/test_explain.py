"""Grad-CAM saliency (skintriage.inference.explain): shape and range on every backbone, known-answer localisation,
the model-randomisation sanity check, drawing on the original image, and concurrent use of one model."""

from __future__ import annotations

import copy
import statistics
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.images import decode_image
from skintriage.data.presets import ClassificationPresetEval, denormalize
from skintriage.inference.explain import crop_box, grad_cam, heatmap_on_image, overlay, saliency
from skintriage.metrics import malignant_columns
from skintriage.model.bundle import Bundle, load_bundle
from skintriage.model.registry import ModelConfig, SkinClassifier, create_model, get_spec, list_models
from tests.helpers import shared_data

HAM = "ham10000_isic2018_224"


# ---------------------------------------------------------------------------------------------------
# Every registered backbone


@pytest.mark.parametrize("name", list_models())
def test_grad_cam_on_every_backbone_is_a_clean_map_and_leaves_the_model_alone(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, input_size=64).eval()
    images = torch.randn(1, 3, 64, 64)
    flags = [p.requires_grad for p in model.parameters()]
    with torch.inference_mode():
        expected_logits = model(images)[0].numpy()

    result = saliency(model, images)
    malignancy = grad_cam(model, images, target="malignancy", malignant_indices=[0, 2])
    chosen = grad_cam(model, images, class_index=4)

    for heatmap in (result.heatmap, malignancy, chosen):
        assert heatmap.shape == (64, 64) and heatmap.dtype == np.float32
        assert np.isfinite(heatmap).all()
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
        assert heatmap.max() in (0.0, 1.0)  # scaled by its peak, or all zero
    assert result.class_index == int(expected_logits.argmax()) and result.target == "class"
    np.testing.assert_allclose(result.logits, expected_logits, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())

    with torch.inference_mode():  # as the demo's prediction code runs; the input is then an inference tensor
        inside = grad_cam(model, images.clone())
        inside_malignancy = grad_cam(model, images.clone(), target="malignancy", malignant_indices=[0, 2])
    with torch.no_grad():
        inside_no_grad = grad_cam(model, images)
    np.testing.assert_array_equal(inside, result.heatmap)
    np.testing.assert_array_equal(inside_malignancy, malignancy)
    np.testing.assert_array_equal(inside_no_grad, result.heatmap)
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_are_refused_with_the_reason() -> None:
    model = create_model("resnet18", num_classes=3, input_size=32)
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="training mode"):
        grad_cam(model, images)
    model.eval()
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        grad_cam(model, torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, images, class_index=3)
    with pytest.raises(ValueError, match="needs malignant_indices"):
        grad_cam(model, images, target="malignancy")
    with pytest.raises(ValueError, match="every class"):
        grad_cam(model, images, target="malignancy", malignant_indices=[0, 1, 2])
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, images, target="malignancy", malignant_indices=[5])
    with pytest.raises(ValueError, match="belongs to target='class'"):
        grad_cam(model, images, target="malignancy", malignant_indices=[0], class_index=1)
    with pytest.raises(ValueError, match="target must be"):
        grad_cam(model, images, target="benign")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# Known-answer localisation on a hand-built model (no data needed)


class ColourNet(nn.Module):
    """Laid out like torchvision's EfficientNet (``features``, ``avgpool``, ``classifier[-1]`` linear), the split
    :class:`skintriage.model.registry.SkinClassifier` splits at for ``efficientnet_b0``, with hand-set weights.

    Channel 0 of the maps is "red minus green", channel 1 "green minus red" (both ReLU'd, optionally
    average-pooled by ``pool`` to coarsen the maps); class 0 reads channel 0, class 1 channel 1 and
    class 2 nothing. So the evidence for class 0 is exactly where the image is red.
    """

    def __init__(self, pool: int = 1, class_weights: list[list[float]] | None = None):
        super().__init__()
        conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        head = nn.Linear(2, 3)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]).view(2, 3, 1, 1))
            head.weight.copy_(torch.tensor(class_weights or [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
            head.bias.zero_()
        layers: list[nn.Module] = [conv, nn.ReLU()]
        if pool > 1:
            layers.append(nn.AvgPool2d(pool))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Identity(), head)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def colour_net(**kwargs) -> SkinClassifier:
    """:class:`ColourNet` as ``create_model`` returns a model: with the spec it is laid out like (head at "classifier.1")."""
    config = ModelConfig("efficientnet_b0", 3, 32, "small", None)
    return SkinClassifier(ColourNet(**kwargs), get_spec("efficientnet_b0"), config)


def red_and_green_squares() -> torch.Tensor:
    """A black 32x32 image, red in the top-left quadrant's [2:14, 2:14], green in the bottom-right [18:30, 18:30]."""
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, 2:14, 2:14] = 1.0
    image[0, 1, 18:30, 18:30] = 1.0
    return image


def quadrant_masses(heatmap: np.ndarray) -> np.ndarray:
    """Summed heat of the (top-left, top-right, bottom-left, bottom-right) quadrants."""
    h, w = heatmap.shape[0] // 2, heatmap.shape[1] // 2
    return np.array([heatmap[:h, :w].sum(), heatmap[:h, w:].sum(), heatmap[h:, :w].sum(), heatmap[h:, w:].sum()])


def test_grad_cam_marks_exactly_the_pixels_that_drive_the_class() -> None:
    model, image = colour_net(), red_and_green_squares()
    red = np.zeros((32, 32), dtype=bool)
    red[2:14, 2:14] = True
    green = np.zeros((32, 32), dtype=bool)
    green[18:30, 18:30] = True

    for heatmap, where in (
        (grad_cam(model, image, class_index=0), red),
        (grad_cam(model, image, class_index=1), green),
        # log P(class 0): its gradient favours channel 0 and counts against channel 1
        (grad_cam(model, image, target="malignancy", malignant_indices=[0]), red),
        (grad_cam(model, image, target="malignancy", malignant_indices=[1], temperature=0.5), green),
    ):
        np.testing.assert_array_equal(heatmap[where], 1.0)  # maps at full resolution: no blurring
        np.testing.assert_array_equal(heatmap[~where], 0.0)


@pytest.mark.parametrize("pool", [2, 4, 8])
def test_coarse_maps_are_upsampled_onto_the_right_quadrant(pool: int) -> None:
    model, image = colour_net(pool=pool), red_and_green_squares()
    heatmap = grad_cam(model, image, class_index=0)
    masses = quadrant_masses(heatmap)
    assert heatmap.shape == (32, 32)
    assert masses[0] > 0.85 * masses.sum()
    # bilinear upsampling spreads heat by half a cell (pool / 2 pixels) past the last red cell, no further
    np.testing.assert_array_equal(heatmap[16 + pool // 2 :, :], 0.0)
    np.testing.assert_array_equal(heatmap[:, 16 + pool // 2 :], 0.0)


def test_no_positive_evidence_gives_an_all_zero_map_not_nan() -> None:
    # class 2 reads nothing (zero gradient); a class that only counts red *against* itself has negative weights
    model = colour_net(class_weights=[[-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    for index in (0, 2):
        heatmap = grad_cam(model, red_and_green_squares(), class_index=index)
        assert heatmap.dtype == np.float32 and not np.isnan(heatmap).any()
        np.testing.assert_array_equal(heatmap, 0.0)


# ---------------------------------------------------------------------------------------------------
# The bundled model on real images


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    if not (DEFAULT_BUNDLE / "model.safetensors").is_file():
        pytest.skip(f"no bundled model weights at {DEFAULT_BUNDLE / 'model.safetensors'}")
    return load_bundle(DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def test_images() -> pd.DataFrame:
    root = shared_data(HAM)
    frame = pd.read_csv(root / "isic2018_task3_test_labels.csv")
    frame["path"] = [root / file for file in frame["file"]]
    return frame


def model_input(bundle: Bundle, image: Image.Image) -> torch.Tensor:
    """The (1, 3, S, S) tensor the bundled model sees for ``image`` (its evaluation preprocessing)."""
    preprocessing = bundle.metadata.preprocessing
    preset = ClassificationPresetEval(input_size=preprocessing.input_size, crop_fraction=preprocessing.crop_fraction)
    return preset(image).unsqueeze(0)


def paste_in_quadrant(lesion: Image.Image, quadrant: int) -> Image.Image:
    """A 448x448 canvas of the lesion image's own skin colour (median of its border) with the lesion scaled to
    224x224 in one quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)."""
    pixels = np.asarray(lesion)
    border = np.concatenate([pixels[:8], pixels[-8:], pixels[:, :8].swapaxes(0, 1), pixels[:, -8:].swapaxes(0, 1)])
    skin = tuple(int(v) for v in np.median(border.reshape(-1, 3), axis=0))
    canvas = Image.new("RGB", (448, 448), skin)
    canvas.paste(lesion.resize((224, 224), Image.Resampling.BICUBIC), ((quadrant % 2) * 224, (quadrant // 2) * 224))
    return canvas


def test_the_malignancy_map_of_a_melanoma_points_at_the_lesion(bundle: Bundle, test_images: pd.DataFrame) -> None:
    """Eight melanomas (the first in the ISIC 2018 test set), each pasted into each quadrant of plain skin.

    Measured: 6 of the 8 lesions give a map in every quadrant, and those maps put the most heat on the
    lesion's quadrant in 23 of 24 cases (chance: 6), on average 86 % of it. The other 2 give all-zero
    maps wherever they are pasted: nothing in them raises the malignancy score of this model (Grad-CAM
    keeps only positive evidence), so an empty map is a legitimate answer that the demo must show as such.
    """
    malignant = np.flatnonzero(malignant_columns(bundle.classes)).tolist()
    hits, fractions = [], []
    for path in test_images.loc[test_images["dx"] == "mel", "path"].iloc[:8]:
        lesion = decode_image(path)
        for quadrant in range(4):
            images = model_input(bundle, paste_in_quadrant(lesion, quadrant))
            heatmap = grad_cam(
                bundle.model,
                images,
                target="malignancy",
                malignant_indices=malignant,
                temperature=bundle.temperature,
            )
            masses = quadrant_masses(heatmap)
            if masses.sum() > 0:
                hits.append(int(masses.argmax()) == quadrant)
                fractions.append(masses[quadrant] / masses.sum())
    assert len(hits) >= 16, f"only {len(hits)} of 32 maps show any evidence"
    assert np.mean(hits) >= 0.85, hits
    assert np.mean(fractions) > 0.6, fractions


RANDOMISED_FRACTION = 0.25  # the top of the network the sanity check re-initialises, by state-dict entries


def test_the_map_depends_on_the_learned_weights(bundle: Bundle, test_images: pd.DataFrame) -> None:
    """Cascading model-randomisation sanity check (Adebayo et al., 2018): re-initialising the top of the network
    must change the maps, or they show the image (edges, dark blobs) rather than what the model learned.

    The top is the last quarter of the state-dict entries, which follow the forward order (ResNet-18: layer4
    and fc; EfficientNet-Lite0: from blocks.5.1 to the classifier), so the check needs no layer names. One
    random re-initialisation can by chance give maps like the trained model's (single images up to 0.5 here),
    so the Spearman correlation is averaged over 8 images and 3 re-initialisations (measured on the bundled
    Lite0: 0.17; 0.33 when only the last tenth is re-initialised; 1.0 for the same model).
    """
    model = bundle.model
    inputs = [model_input(bundle, decode_image(path)) for path in test_images["path"].iloc[:8]]
    trained = [grad_cam(model, images) for images in inputs]
    config = model.config
    keys = list(model.state_dict())
    top = set(keys[round(len(keys) * (1 - RANDOMISED_FRACTION)) :])
    correlations = []
    for seed in range(3):
        torch.manual_seed(seed)
        fresh = create_model(
            config.name, num_classes=config.num_classes, input_size=config.input_size, stem=config.stem
        )
        randomised = copy.deepcopy(model)
        state = {k: v for k, v in fresh.state_dict().items() if k in top}
        assert len(state) == len(top)  # every re-initialised entry exists in the trained model, and none is missed
        randomised.load_state_dict(state, strict=False)
        randomised.eval()
        for images, heatmap in zip(inputs, trained, strict=True):
            correlations.append(spearmanr(heatmap.ravel(), grad_cam(randomised, images).ravel())[0])
    assert np.nanmean(correlations) < 0.5, correlations
    assert spearmanr(trained[0].ravel(), grad_cam(model, inputs[0]).ravel())[0] == pytest.approx(1.0)


def test_timing_of_one_grad_cam_on_the_bundled_model(bundle: Bundle) -> None:
    """Printed, not asserted (shared CPUs vary); run with ``-s`` to see it. The demo's budget is 150 ms in all."""
    side = bundle.model.config.input_size
    images = torch.randn(1, 3, side, side)
    for _ in range(3):
        grad_cam(bundle.model, images)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        grad_cam(bundle.model, images)
        times.append(time.perf_counter() - start)
    print(
        f"\ngrad_cam, bundled model, {side} px, {torch.get_num_threads()} threads: "
        f"median {1000 * statistics.median(times):.1f} ms, fastest {1000 * min(times):.1f} ms"
    )


# ---------------------------------------------------------------------------------------------------
# Drawing on the original image


def test_crop_box_is_the_eval_presets_crop() -> None:
    # 300x200, input 128, crop 0.8: short side to 160 (scale 0.8) -> 240x160, crop from (56, 16)
    assert crop_box((300, 200), input_size=128, crop_fraction=0.8) == pytest.approx((70.0, 20.0, 230.0, 180.0))
    # crop 1.0: 300x200 -> 192x128, crop from (32, 0)
    assert crop_box((300, 200), input_size=128) == pytest.approx((50.0, 0.0, 250.0, 200.0))
    assert crop_box((128, 128), input_size=128) == pytest.approx((0.0, 0.0, 128.0, 128.0))
    with pytest.raises(ValueError, match="crop_fraction"):
        crop_box((300, 200), input_size=128, crop_fraction=0.0)


@pytest.mark.parametrize(("size", "crop_fraction"), [((300, 200), 1.0), ((300, 200), 0.8), ((211, 397), 0.875)])
def test_the_heatmap_lands_where_the_preset_took_its_pixels(size: tuple[int, int], crop_fraction: float) -> None:
    """Round trip: the preset's own output, used as a 'heatmap' and drawn back, reproduces the original image."""
    xs, ys = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    pattern = 0.5 + 0.25 * np.sin(xs / 9.0) + 0.25 * np.cos(ys / 7.0)  # smooth, but no two shifts alike
    image = Image.fromarray(np.repeat((pattern * 255).round().astype(np.uint8)[:, :, None], 3, axis=2))
    model_input = ClassificationPresetEval(input_size=64, crop_fraction=crop_fraction)(image)
    seen = denormalize(model_input)[0].clamp(0, 1).numpy()

    values, inside = heatmap_on_image(seen, size, crop_fraction=crop_fraction)

    left, top, right, bottom = crop_box(size, input_size=64, crop_fraction=crop_fraction)
    assert values.shape == inside.shape == (size[1], size[0])
    assert inside.sum() == pytest.approx((right - left) * (bottom - top), rel=0.05)
    assert np.all(values[~inside] == 0.0)
    error = np.abs(values[inside] - np.asarray(image)[:, :, 0][inside] / 255.0)
    assert error.mean() < 0.03  # a crop offset of even a few pixels gives about 0.1


def test_overlay_colours_the_hot_spot_keeps_cold_parts_and_fades_what_the_model_did_not_see() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(60, 200, size=(200, 300, 3), dtype=np.uint8)  # 300 wide, 200 high
    image = Image.fromarray(pixels)
    heatmap = np.zeros((128, 128), dtype=np.float32)
    heatmap[48:80, 48:80] = 1.0  # the middle of what the model saw

    for crop_fraction in (1.0, 0.8):
        drawn = overlay(image, heatmap, crop_fraction=crop_fraction, alpha=0.5, outside_fade=0.6)
        out = np.asarray(drawn).astype(int)
        assert drawn.size == image.size and drawn.mode == "RGB"
        left, top, right, bottom = (round(v) for v in crop_box(image.size, input_size=128, crop_fraction=crop_fraction))
        outside = np.ones((200, 300), dtype=bool)
        outside[top:bottom, left:right] = False
        # outside the crop: faded towards grey 200, by 0.6
        np.testing.assert_allclose(out[outside], np.rint(0.4 * pixels[outside] + 0.6 * 200), atol=1)
        # the hot spot is blended with inferno's brightest colour (pale yellow, about (252, 255, 164))
        hot = out[100, 150] - 0.5 * pixels[100, 150]
        np.testing.assert_allclose(hot, 0.5 * np.array([252, 255, 164]), atol=3)
        # cold parts of the crop keep their own colours: not darkened, not tinted
        np.testing.assert_array_equal(out[top + 2, left + 2], pixels[top + 2, left + 2])

    empty = np.asarray(overlay(image, np.zeros((128, 128), np.float32), outside_fade=0.0))
    assert empty.tolist() == pixels.tolist()  # nothing raised the score: the photo as it was, no dark square
    assert np.asarray(overlay(image, heatmap, alpha=0.0, outside_fade=0.0)).tolist() == pixels.tolist()
    gray = overlay(image.convert("L"), heatmap)
    assert gray.mode == "RGB" and gray.size == (300, 200)
    with pytest.raises(ValueError, match="outside_fade"):
        overlay(image, heatmap, outside_fade=1.5)


# ---------------------------------------------------------------------------------------------------
# One model, concurrent requests


def test_concurrent_calls_on_one_model_match_sequential_ones() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=7, input_size=48).eval()
    inputs = [torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    targets = [{}, {"class_index": 3}, {"target": "malignancy", "malignant_indices": [0, 1]}, {}]
    sequential = [grad_cam(model, x, **kw) for x, kw in zip(inputs, targets, strict=True)]
    assert len({h.tobytes() for h in sequential}) == 4 and all(h.max() == 1.0 for h in sequential)

    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for round_ in range(3):
                with torch.inference_mode():
                    results[i, round_] = grad_cam(model, inputs[i], **targets[i])
        except BaseException as error:  # reported below, in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, errors
    for (i, _), heatmap in results.items():
        np.testing.assert_allclose(heatmap, sequential[i], atol=1e-5)
    assert len(results) == 12
    assert all(p.grad is None for p in model.parameters())
