"""Train/eval presets: shapes, normalisation, seeding, the watermark mask and the vignette."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from skintriage.data.presets import (
    IMAGENET_NORMALIZATION,
    CircularVignette,
    ClassificationPresetEval,
    ClassificationPresetTrain,
    denormalize,
    mask_corner,
)

QUIET = {"color_prob": 0.0, "gamma_prob": 0.0, "blur_prob": 0.0, "noise_prob": 0.0, "vignette_prob": 0.0}


def noise(height=300, width=400, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(300, 400), (400, 300), (17, 23), (1024, 768), (64, 64)])
def test_any_rgb_size_gives_a_normalised_float_chw_tensor(size):
    image = noise(*size)
    for preset in (
        ClassificationPresetTrain(input_size=64, seed=0, vignette_prob=1.0, mask_watermark=True),
        ClassificationPresetEval(input_size=64, mask_watermark=True),
    ):
        out = preset(image)
        assert isinstance(out, torch.Tensor)
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32


def test_eval_normalises_with_the_one_normalization_constant():
    mean = np.array(IMAGENET_NORMALIZATION.mean) * 255
    image = np.broadcast_to(mean.round().astype(np.uint8), (300, 400, 3)).copy()
    out = ClassificationPresetEval(input_size=32)(image)
    assert out.abs().max() < 0.02  # the mean colour maps to 0
    white = ClassificationPresetEval(input_size=32)(np.full((50, 60, 3), 255, np.uint8))
    expected = (1 - torch.tensor(IMAGENET_NORMALIZATION.mean)) / torch.tensor(IMAGENET_NORMALIZATION.std)
    assert torch.allclose(white[:, 5, 5], expected, atol=1e-4)
    assert torch.allclose(denormalize(white)[:, 5, 5], torch.ones(3), atol=1e-4)


def test_eval_keeps_the_whole_short_side_and_is_deterministic():
    image = noise(300, 400)
    preset = ClassificationPresetEval(input_size=64)
    assert torch.equal(preset(image), preset(image))
    assert torch.equal(preset(image), preset(Image.fromarray(image)))  # PIL input is accepted


def test_train_is_reproducible_for_a_seed_and_varies_between_seeds():
    image = noise()
    a = ClassificationPresetTrain(input_size=48, seed=7)
    b = ClassificationPresetTrain(input_size=48, seed=7)
    c = ClassificationPresetTrain(input_size=48, seed=8)
    first = [a(image) for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(first, [b(image) for _ in range(4)], strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, [c(image) for _ in range(4)], strict=True))
    assert not torch.equal(first[0], first[1])  # successive draws differ


def test_seeded_flips_are_independent_of_each_other():
    # albumentations' Compose(seed=...) gives each transform an identically seeded generator, so two
    # flips with p=0.5 always fire together; the presets share one stream instead.
    image = noise(32, 32)
    preset = ClassificationPresetTrain(input_size=32, scale=(1, 1), ratio=(1, 1), rotate90_prob=0.0, seed=3, **QUIET)
    reference = ClassificationPresetEval(input_size=32)(image)
    seen = set()
    for _ in range(40):
        out = preset(image)
        for label, flipped in (
            ("none", reference),
            ("h", reference.flip(-1)),
            ("v", reference.flip(-2)),
            ("hv", reference.flip(-1).flip(-2)),
        ):
            if torch.allclose(out, flipped):
                seen.add(label)
    assert seen == {"none", "h", "v", "hv"}


def test_mask_corner_fills_the_bottom_left_quarter_with_the_median():
    image = noise(300, 400)
    image[225:, :100] = (255, 0, 255)  # a magenta "logo"
    masked = mask_corner(image)
    median = np.median(image.reshape(-1, 3), axis=0).round()
    assert (masked[225:, :100] == median).all()
    assert np.array_equal(masked[:225], image[:225])
    assert np.array_equal(masked[:, 100:], image[:, 100:])


def test_watermark_mask_changes_the_bottom_left_corner_and_not_the_centre():
    image = noise(300, 400)
    image[225:, :100] = (255, 0, 255)
    plain = ClassificationPresetEval(input_size=64)(image)
    masked = ClassificationPresetEval(input_size=64, mask_watermark=True)(image)
    assert not torch.allclose(plain[:, 52:, :8], masked[:, 52:, :8])
    assert torch.equal(plain[:, 16:48, 16:48], masked[:, 16:48, 16:48])


def magenta_pixels(tensor):
    rgb = denormalize(tensor)
    return int(((rgb[0] > 0.9) & (rgb[1] < 0.1) & (rgb[2] > 0.9)).sum())


def test_train_preset_with_the_mask_never_shows_the_logo():
    image = np.full((300, 400, 3), 128, np.uint8)
    image[225:, :100] = (255, 0, 255)
    masked = ClassificationPresetTrain(input_size=48, mask_watermark=True, seed=0, **QUIET)
    plain = ClassificationPresetTrain(input_size=48, seed=0, **QUIET)
    assert sum(magenta_pixels(masked(image)) for _ in range(10)) == 0
    assert sum(magenta_pixels(plain(image)) for _ in range(10)) > 0


def test_vignette_darkens_the_corners_and_keeps_the_centre():
    image = np.full((300, 400, 3), 200, np.uint8)
    vignette = CircularVignette(radius=(0.7, 0.7), softness=(0.05, 0.05), shift=0.0, floor=(0.0, 0.0), p=1.0)
    out = vignette(image=image)["image"]
    assert out.dtype == np.uint8 and out.shape == image.shape
    for corner in (out[:10, :10], out[:10, -10:], out[-10:, :10], out[-10:, -10:]):
        assert corner.max() == 0
    assert (out[130:170, 180:220] == 200).all()


def test_presets_pickle_and_continue_the_same_stream():
    image = noise(100, 120)
    preset = ClassificationPresetTrain(input_size=32, seed=1)
    copy = pickle.loads(pickle.dumps(preset))
    assert torch.equal(preset(image), copy(image))
    eval_copy = pickle.loads(pickle.dumps(ClassificationPresetEval(input_size=32, mask_watermark=True)))
    assert eval_copy(image).shape == (3, 32, 32)


def test_wrong_input_is_a_clear_error():
    preset = ClassificationPresetEval(input_size=32)
    with pytest.raises(ValueError, match=r"RGB uint8 array of shape \(H, W, 3\)"):
        preset(np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        preset(np.zeros((20, 20, 3), np.float32))


class _Repeat(Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.image = noise(64, 64)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.transform(self.image)


def test_dataloader_workers_do_not_repeat_each_other():
    preset = ClassificationPresetTrain(input_size=32, seed=0)
    loader = DataLoader(_Repeat(preset), batch_size=1, num_workers=2, multiprocessing_context="fork")
    first_of_worker_0, first_of_worker_1, *_ = list(loader)  # items 0 and 1 come from different workers
    assert not torch.equal(first_of_worker_0, first_of_worker_1)
