"""The model registry: every backbone builds and runs, small-input stems, local and torchvision weights."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from skintriage.model.registry import (
    MODELS,
    PretrainedWeightsError,
    create_model,
    list_models,
    load_weights,
)

EXPECTED = [
    "convnext_tiny",
    "efficientnet_b0",
    "efficientnet_lite0",
    "efficientnet_lite2",
    "mobilenet_v3_large",
    "resnet18",
    "resnet34",
    "resnet50",
]


def test_list_models_is_the_registry():
    assert list_models() == EXPECTED
    assert set(MODELS) == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_model_builds_and_runs_at_64_px(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, input_size=64)
    assert model.config.stem == "small"
    head = model.head
    assert head.out_features == 7
    assert torch.count_nonzero(head.bias) == 0
    assert 0.005 < head.weight.std().item() < 0.015
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_resnet_small_stem_replaces_the_7x7_conv_and_maxpool():
    small = create_model("resnet18", num_classes=7, input_size=64)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    features = nn.Sequential(*list(small.children())[:-2]).eval()
    with torch.no_grad():
        assert features(torch.zeros(1, 3, 64, 64)).shape[-2:] == (8, 8)  # overall stride 8, not 32

    standard = create_model("resnet18", num_classes=7, input_size=224)
    assert standard.config.stem == "standard"
    assert standard.conv1.kernel_size == (7, 7) and isinstance(standard.maxpool, nn.MaxPool2d)
    forced = create_model("resnet18", num_classes=7, input_size=224, stem="small")
    assert forced.conv1.kernel_size == (3, 3)


def test_resnets_start_with_zero_initialised_residual_branches():
    model = create_model("resnet18", num_classes=7, input_size=224)
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for block in model.layer1)


def test_unknown_model_lists_the_registered_names():
    with pytest.raises(KeyError) as caught:
        create_model("vit_b_16", num_classes=7)
    message = str(caught.value)
    assert "vit_b_16" in message
    assert all(name in message for name in EXPECTED)


def test_num_classes_must_be_positive():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet18", num_classes=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_round_trip_with_a_mismatched_head(tmp_path, suffix):
    torch.manual_seed(0)
    source = create_model("resnet18", num_classes=5, input_size=64)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)

    torch.manual_seed(1)
    model = create_model("resnet18", num_classes=7, input_size=64, stem="small", pretrained=path)
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.state_dict()[key], value), key
    assert model.fc.weight.shape == (7, 512)
    assert torch.count_nonzero(model.fc.bias) == 0  # fresh head, not the file's 5-way one
    assert model.config.pretrained == str(path)

    report = load_weights(create_model("resnet18", num_classes=7, input_size=64), path, reinitialised=("fc.",))
    assert report.ok
    assert sorted(report.skipped) == ["fc.bias: (5,) -> (7,)", "fc.weight: (5, 512) -> (7, 512)"]
    assert "skipped" in report.summary()


def test_local_weights_of_another_architecture_are_refused_with_the_keys(tmp_path):
    path = tmp_path / "resnet34.safetensors"
    save_file(create_model("resnet34", num_classes=7, input_size=64).state_dict(), str(path))
    with pytest.raises(PretrainedWeightsError) as caught:
        create_model("resnet18", num_classes=7, input_size=64, stem="small", pretrained=path)
    message = str(caught.value)
    assert "96 unexpected" in message and "layer1.2.conv1.weight" in message


def test_local_weights_with_another_stem_are_refused(tmp_path):
    path = tmp_path / "small.safetensors"
    save_file(create_model("resnet18", num_classes=7, input_size=64).state_dict(), str(path))
    # With weights, stem="auto" keeps the standard 7x7 stem, which the 3x3 weights do not fit.
    with pytest.raises(PretrainedWeightsError, match=r"conv1\.weight: \(64, 3, 3, 3\) -> \(64, 3, 7, 7\)"):
        create_model("resnet18", num_classes=7, input_size=64, pretrained=path)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="not found"):
        create_model("resnet18", num_classes=7, pretrained=tmp_path / "absent.safetensors")


def test_torchvision_download_failure_says_what_to_do(tmp_path, monkeypatch):
    # Offline by construction: an empty hub cache and a download function that fails at once.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no internet (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(PretrainedWeightsError) as caught:
        create_model("resnet18", num_classes=7, pretrained="torchvision")
    message = str(caught.value)
    assert "https://download.pytorch.org/models/resnet18-" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "pretrained=Path(" in message
    assert "no internet (test)" in message


@pytest.mark.parametrize("name", list_models())
def test_feature_maps_and_head_inputs_reproduce_the_forward_pass(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, input_size=64).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.feature_maps(images)
        split = model.head(model.head_inputs(maps))
        whole = model(images)
    assert maps.ndim == 4 and maps.shape[0] == 2
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
