"""The optimiser's parameter groups and the learning-rate schedule, on hand-worked values (no training)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from skintriage.training.config import TrainConfig
from skintriage.training.optim import learning_rate, make_optimizer, parameter_groups, set_learning_rate


def config(**fields: object) -> TrainConfig:
    return TrainConfig(name="unit", sources=[{"name": "folder", "root": "unused"}], **fields)


# lr 0.1 over 10 epochs of 10 steps: 20 warm-up steps, then 80 of cosine decay to the floor 0.01 * 0.1 = 0.001.
SCHEDULE = config(lr=0.1, epochs=10, warmup_epochs=2, min_lr_ratio=0.01)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.1 * 1 / 20),  # warm-up starts near 0, not at 0: the first step already moves
        (9, 0.1 * 10 / 20),
        (19, 0.1),  # the last warm-up step reaches the peak
        (20, 0.1),  # decay starts at the peak: progress 0, cos 0 = 1
        (60, 0.001 + 0.099 * 0.5),  # half-way (40 of 80): cos(pi / 2) = 0
        (80, 0.001 + 0.099 * 0.5 * (1 - math.sqrt(0.5))),  # three quarters: cos(3 pi / 4) = -sqrt(1/2)
        (100, 0.001),  # the end of the schedule: the floor
        (130, 0.001),  # past the end (a resumed run given more steps): stays at the floor
    ],
)
def test_learning_rate_warms_up_linearly_then_decays_by_a_cosine_to_the_floor(step: int, expected: float) -> None:
    assert learning_rate(SCHEDULE, step, 10) == pytest.approx(expected, rel=1e-12)


def test_without_warm_up_the_first_step_is_at_the_peak() -> None:
    schedule = config(lr=0.1, epochs=2, warmup_epochs=0, min_lr_ratio=0.0)
    assert learning_rate(schedule, 0, 5) == pytest.approx(0.1)
    assert learning_rate(schedule, 5, 5) == pytest.approx(0.05)  # 5 of 10 decay steps
    assert learning_rate(schedule, 10, 5) == pytest.approx(0.0)


class Tiny(nn.Module):
    """A backbone (convolution, norm, a linear ``fc_in`` whose name starts like the head's), a head ``fc``, and
    a frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.fc_in = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)


def named_groups(model: nn.Module, groups: list[dict]) -> list[tuple[set[str], float, float]]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [({names[id(p)] for p in group["params"]}, group["weight_decay"], group["lr_scale"]) for group in groups]


def test_weight_decay_falls_on_matrices_and_kernels_only_and_the_backbone_trains_slower() -> None:
    model = Tiny()
    groups = parameter_groups(model, 0.05, head="fc", backbone_lr_ratio=0.1)
    assert named_groups(model, groups) == [
        ({"fc.weight"}, 0.05, 1.0),  # decayed first, the head's full rate before the backbone's
        ({"conv.weight", "fc_in.weight"}, 0.05, 0.1),  # "fc_in" is not under the head "fc"
        ({"fc.bias"}, 0.0, 1.0),
        ({"conv.bias", "norm.weight", "norm.bias", "fc_in.bias"}, 0.0, 0.1),
    ]  # and the frozen parameter is in no group


def test_without_a_head_every_parameter_trains_at_the_full_rate() -> None:
    model = Tiny()
    assert named_groups(model, parameter_groups(model, 0.05)) == [
        ({"conv.weight", "fc_in.weight", "fc.weight"}, 0.05, 1.0),
        ({"conv.bias", "norm.weight", "norm.bias", "fc_in.bias", "fc.bias"}, 0.0, 1.0),
    ]


def test_the_learning_rate_is_set_on_every_group_times_its_scale() -> None:
    model = Tiny()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05, head="fc", backbone_lr_ratio=0.1), lr=1.0)
    set_learning_rate(optimizer, 0.02)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.02, 0.002, 0.02, 0.002])


def test_the_optimizer_follows_the_config() -> None:
    model = nn.Linear(3, 2)
    adamw = make_optimizer(config(lr=0.01, weight_decay=0.1), model)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [group["weight_decay"] for group in adamw.param_groups] == [0.1, 0.0]
    sgd = make_optimizer(config(optimizer="sgd", momentum=0.8), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"]
