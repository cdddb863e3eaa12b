"""The optimiser and its learning rate: what :mod:`skintriage.training.loop` steps with.

Weight decay applies to convolution and linear weights only; a pretrained backbone may train at a fraction of
the head's rate (``backbone_lr_ratio``), carried in each group as ``lr_scale``. The learning rate is a function
of the optimiser step alone (linear warm-up, then cosine decay), set on every group before every step, so
resuming needs only the step count, no scheduler state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from skintriage.model.registry import get_spec
from skintriage.training.config import TrainConfig


def parameter_groups(
    model: nn.Module, weight_decay: float, *, head: str | None = None, backbone_lr_ratio: float = 1.0
) -> list[dict]:
    """Weight decay on convolution and linear weights only (decaying norms and biases only hurts); the
    parameters under ``head`` (a dotted module path) train at the full rate, the backbone at
    ``backbone_lr_ratio`` of it (``lr_scale``): a pretrained backbone needs smaller steps than a new head."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            in_head = head is not None and name.startswith(head + ".")
            key = (parameter.ndim > 1, 1.0 if in_head else backbone_lr_ratio)
            groups.setdefault(key, []).append(parameter)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
        for (decayed, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], -item[0][1]))
    ]


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(
        model,
        config.weight_decay,
        head=get_spec(config.model).head,
        backbone_lr_ratio=config.backbone_lr_ratio,
    )
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up from ~0, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = config.min_lr_ratio * config.lr
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """``lr`` on every group, times the group's ``lr_scale`` (the backbone's fraction of the head's rate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
