"""Model registry: torchvision backbones by name, with a classification head sized for our classes.

In the style of timm's ``create_model``::

    model = create_model("resnet18", num_classes=7, input_size=224)
    model = create_model("efficientnet_b0", num_classes=7, pretrained="torchvision")
    model = create_model("resnet50", num_classes=7, pretrained=Path("weights/resnet50.safetensors"))

Each backbone is one :class:`ModelSpec` in :data:`MODELS`; a spec knows its torchvision builder, where
its classification head lives (a dotted module path) and how to make its stem suitable for small
inputs. Adding a backbone is adding an entry, not another branch.

Decisions:

* **From-scratch initialisation.** torchvision's own initialisation is kept (Kaiming for convolutions,
  truncated normal and layer scale 1e-6 for ConvNeXt). ResNets are built with
  ``zero_init_residual=True``: the last BatchNorm gamma of each residual block starts at zero, so each
  block starts as the identity and the deep network trains like a shallow one at first (Goyal et al.,
  2017). The new head is ``Linear`` with weights drawn from N(0, 0.01²) and zero bias, so the first
  logits are near zero and the initial loss is close to log(num_classes).
* **Small-input stem** (``stem="small"``; ``stem="auto"`` picks it for ``input_size <= 128`` when no
  pretrained weights are loaded). A standard ImageNet stem downsamples by 4 before the first block
  and by 32 overall, so a 64 px image reaches the last stage as 2x2 pixels and fine texture (the
  dermoscopic network, dots and globules) is gone after the first layer. The small stem removes some
  of that downsampling, as the CIFAR ResNets do:

  - ResNets: the 7x7 stride-2 convolution + 3x3 max-pool become one 3x3 stride-1 convolution
    (overall stride 32 -> 8; a 64 px input ends as 8x8);
  - EfficientNet-B0 and MobileNetV3-Large: the first 3x3 convolution gets stride 1 (32 -> 16);
  - ConvNeXt-Tiny: the 4x4 stride-4 patchify convolution becomes 2x2 stride 2 (32 -> 16).

  With pretrained weights ``"auto"`` keeps the standard stem, whose weights exist; resize the images
  up instead. An explicit ``stem="small"`` with pretrained weights re-initialises the stem weights that
  no longer fit (reported like the head's), for EfficientNet and MobileNet the weights still fit.
* **Pretrained weights.** ``pretrained="torchvision"`` asks torchvision's weights API for the
  ``DEFAULT`` ImageNet weights (downloaded once into the torch hub cache). Where there is no internet
  the download fails with :class:`PretrainedWeightsError`, which says which file to fetch and where to
  put it. ``pretrained=Path(...)`` loads a local state dict (``.safetensors`` via
  ``safetensors.torch.load_file``, anything else via ``torch.load(weights_only=True)``, never
  unpickling code). Head tensors whose shape does not match (a checkpoint trained for another number
  of classes) are skipped and the new head keeps its fresh initialisation; any other missing,
  unexpected or mis-shaped key is an error that lists the keys, because a silently half-loaded
  backbone trains to a plausible but worse model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torchvision.models as tvm
from torch import nn

logger = logging.getLogger(__name__)

SMALL_INPUT_MAX = 128  # stem="auto" uses the small stem at or below this input size (from scratch only)
HEAD_INIT_STD = 0.01

Stem = Literal["auto", "standard", "small"]
Pretrained = Literal["torchvision"] | str | os.PathLike[str] | None


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights that could not be obtained or do not fit the model."""


@dataclass(frozen=True)
class ModelSpec:
    """One registered backbone.

    ``head`` is the dotted path of the final ``nn.Linear`` (``fc``, ``classifier.1``); ``small_stem``
    modifies a built model in place to the small-input stem and returns the dotted prefixes of the
    parameters it re-created (whose pretrained weights can no longer be used).
    """

    name: str
    builder: Callable[..., nn.Module]
    head: str
    small_stem: Callable[[nn.Module], tuple[str, ...]]
    build_kwargs: Mapping[str, object] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class ModelConfig:
    """How a model was created; stored on the model as ``model.skintriage_config`` (for checkpoints)."""

    name: str
    num_classes: int
    input_size: int
    stem: str
    pretrained: str | None


@dataclass
class WeightsReport:
    """What :func:`load_weights` did with each key of a state dict."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "key: file shape -> model shape" (head/stem only)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # wrong shape outside the head/stem

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        for title, keys in (
            ("skipped (shape differs; kept the new initialisation)", self.skipped),
            ("missing from the file", self.missing),
            ("unexpected (in the file, not in the model)", self.unexpected),
            ("wrong shape", self.mismatched),
        ):
            if keys:
                keys = sorted(keys, key=lambda key: (key.split(":")[0].endswith("num_batches_tracked"), key))
                shown = ", ".join(keys[:10]) + (f", ... and {len(keys) - 10} more" if len(keys) > 10 else "")
                lines.append(f"  {len(keys)} {title}: {shown}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Stems for small inputs


def _resnet_small_stem(model: nn.Module) -> tuple[str, ...]:
    out_channels = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return ("conv1.",)


def _first_conv_stride_one(model: nn.Module) -> tuple[str, ...]:
    """EfficientNet / MobileNetV3: ``features[0][0]`` is a 3x3 stride-2 conv; stride 1 keeps its weights."""
    conv = model.features[0][0]
    conv.stride = (1, 1)
    return ()


def _convnext_small_stem(model: nn.Module) -> tuple[str, ...]:
    old = model.features[0][0]
    new = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=2, stride=2, bias=True)
    nn.init.trunc_normal_(new.weight, std=0.02)
    nn.init.zeros_(new.bias)
    model.features[0][0] = new
    return ("features.0.0.",)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet18", tvm.resnet18, "fc", _resnet_small_stem, {"zero_init_residual": True}, "ResNet-18, 11.7M"),
        ModelSpec("resnet34", tvm.resnet34, "fc", _resnet_small_stem, {"zero_init_residual": True}, "ResNet-34, 21.8M"),
        ModelSpec("resnet50", tvm.resnet50, "fc", _resnet_small_stem, {"zero_init_residual": True}, "ResNet-50, 25.6M"),
        ModelSpec(
            "efficientnet_b0", tvm.efficientnet_b0, "classifier.1", _first_conv_stride_one, {}, "EfficientNet-B0, 5.3M"
        ),
        ModelSpec(
            "mobilenet_v3_large",
            tvm.mobilenet_v3_large,
            "classifier.3",
            _first_conv_stride_one,
            {},
            "MobileNetV3-Large, 5.5M",
        ),
        ModelSpec("convnext_tiny", tvm.convnext_tiny, "classifier.2", _convnext_small_stem, {}, "ConvNeXt-Tiny, 28.6M"),
    )
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return MODELS[name]


# ---------------------------------------------------------------------------------------------------
# The factory


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: Pretrained = None,
    input_size: int = 224,
    stem: Stem = "auto",
) -> nn.Module:
    """Build the registered backbone ``name`` with a fresh ``num_classes``-way linear head.

    ``pretrained``: ``None`` (from scratch), ``"torchvision"`` (torchvision's ``DEFAULT`` ImageNet
    weights, downloaded into the torch hub cache) or a path to a local state dict. ``input_size`` is
    the side of the square images the model will see; with ``stem="auto"`` it chooses the stem (see
    the module docstring). The choices are recorded in ``model.skintriage_config``.
    """
    spec = get_spec(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, not {num_classes!r}")
    if input_size < 16:
        raise ValueError(f"input_size {input_size} is too small; use at least 16 pixels")
    if stem not in ("auto", "standard", "small"):
        raise ValueError(f"stem must be 'auto', 'standard' or 'small', not {stem!r}")
    resolved_stem = stem
    if stem == "auto":
        resolved_stem = "small" if input_size <= SMALL_INPUT_MAX and pretrained is None else "standard"

    if pretrained == "torchvision":
        model = _build_torchvision_pretrained(spec)
        source = "torchvision"
    else:
        model = spec.builder(weights=None, **spec.build_kwargs)
        source = None if pretrained is None else str(pretrained)

    reinitialised = [spec.head + "."]
    if resolved_stem == "small":
        reinitialised += spec.small_stem(model)
    replace_head(model, spec, num_classes)

    if pretrained is not None and pretrained != "torchvision":
        report = load_weights(model, Path(pretrained), reinitialised=tuple(reinitialised))
        if not report.ok:
            raise PretrainedWeightsError(
                f"weights {pretrained} do not fit model {name!r}:\n{report.summary()}\n"
                "Check that the file was saved from the same architecture (and stem)."
            )
        logger.info(report.summary())

    model.skintriage_config = ModelConfig(name, num_classes, input_size, resolved_stem, source)
    return model


def replace_head(model: nn.Module, spec: ModelSpec, num_classes: int) -> nn.Linear:
    """Swap the spec's final ``nn.Linear`` for a new ``num_classes``-way one (N(0, 0.01²), zero bias)."""
    parent_path, _, attribute = spec.head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attribute) if not attribute.isdigit() else parent[int(attribute)]
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{spec.name}: expected nn.Linear at {spec.head!r}, found {type(old).__name__}")
    head = nn.Linear(old.in_features, num_classes)
    nn.init.normal_(head.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(head.bias)
    if attribute.isdigit():
        parent[int(attribute)] = head
    else:
        setattr(parent, attribute, head)
    return head


def get_head(model: nn.Module, name: str) -> nn.Linear:
    """The classification head of a model built by :func:`create_model` (e.g. for a head-only warm-up)."""
    return model.get_submodule(get_spec(name).head)


def feature_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last convolutional block's output (N, C, h, w): where Grad-CAM looks and what the head pools."""
    if isinstance(model, tvm.ResNet):
        x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
        return model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return model.features(images)


def head_inputs(model: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    """The (N, D) vector the final linear layer reads, from :func:`feature_maps`' output.

    ``head(head_inputs(model, feature_maps(model, x)))`` equals ``model(x)``; splitting the forward pass
    this way gives Grad-CAM its gradients without module hooks (which would race between concurrent
    requests on a shared model) and the uncertainty gate its embedding.
    """
    pooled = model.avgpool(maps)
    if isinstance(model, tvm.ResNet):
        return torch.flatten(pooled, 1)
    body = model.classifier[:-1]
    if isinstance(model, tvm.ConvNeXt):  # its classifier starts with a LayerNorm2d over the 4-D pooled map
        return body(pooled)
    return body(torch.flatten(pooled, 1))


def _build_torchvision_pretrained(spec: ModelSpec) -> nn.Module:
    weights = tvm.get_model_weights(spec.builder).DEFAULT
    try:
        return spec.builder(weights=weights)
    except Exception as error:  # URLError, HTTPError, socket timeouts, hash mismatch, ...
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        file_name = weights.url.rsplit("/", 1)[-1]
        raise PretrainedWeightsError(
            f"could not download the torchvision weights for {spec.name!r} ({weights}) from {weights.url}: "
            f"{type(error).__name__}: {error}.\n"
            "This machine probably has no internet access. Either download that file on a machine that "
            f"has, and copy it to {cache / file_name} (the torch hub cache; set TORCH_HOME to move it), "
            f"or pass pretrained=Path('/path/to/{file_name}') to load it from anywhere, "
            "or use pretrained=None to train from scratch."
        ) from error


# ---------------------------------------------------------------------------------------------------
# Local weights


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, without unpickling code.

    A training checkpoint that wraps the weights under ``"state_dict"`` or ``"model"`` is unwrapped,
    and a ``module.`` prefix (DataParallel / DDP) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(f"cannot read weights {path}: {type(error).__name__}: {error}") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_weights(model: nn.Module, path: Path, *, reinitialised: tuple[str, ...] = ()) -> WeightsReport:
    """Load a local state dict into ``model`` and report key by key.

    Keys starting with one of ``reinitialised`` (the new head, a replaced stem) are loaded when their
    shape fits and otherwise skipped; those parts may also be missing from the file. Every other key
    must be present with the right shape; problems are listed in the report (``report.ok`` is then
    False; :func:`create_model` raises on it). Whatever fits is loaded either way.
    """
    state = read_state_dict(path)
    report = WeightsReport(source=str(path))
    own = model.state_dict()
    usable = {}
    for key, tensor in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(own[key].shape):
            entry = f"{key}: {tuple(tensor.shape)} -> {tuple(own[key].shape)}"
            (report.skipped if key.startswith(reinitialised) else report.mismatched).append(entry)
        else:
            usable[key] = tensor
    report.missing = [key for key in own if key not in state and not key.startswith(reinitialised)]
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    return report
