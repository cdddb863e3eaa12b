"""What a run folder holds between epochs, and the one typed record a run resumes from.

``last.pt`` is a :class:`TrainingState`, rewritten (atomically) after every completed epoch and read back with
``torch.load(weights_only=True)`` (:func:`skintriage.model.bundle.load_training_state`): tensors, numbers,
strings, lists and dicts only. It needs no random-number state and no scheduler: every epoch reseeds its
augmentation and sampler from ``(seed, epoch)``, and the learning rate is a function of the step
(:mod:`skintriage.training.optim`); nor a gradient scaler, since autocast is bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from skintriage.model.bundle import BundleError, load_training_state, save_training_state
from skintriage.training.config import ConfigError, TrainConfig

STATE_FILE = "last.pt"  # the TrainingState after the last completed epoch
BEST_FILE = "best.safetensors"  # the evaluation (EMA) weights of the best epoch so far
LOG_FILE = "log.csv"  # one row per completed epoch
SPLITS_FILE = "splits.csv"  # every image's split, written before training


@dataclass
class TrainingState:
    """Everything training needs to continue after its last completed epoch."""

    config: dict  # TrainConfig.model_dump() of the run: resuming under another config is refused
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken: the learning rate's position in its schedule
    history: list[dict] = field(default_factory=list)  # the log.csv rows so far
    best_score: float = -1.0  # the best validation balanced accuracy so far
    stale_epochs: int = 0  # epochs since it last improved (early stopping)
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)  # empty without an EMA
    optimizer: dict = field(default_factory=dict)

    def capture(self, *, model: nn.Module, ema: AveragedModel | None, optimizer: torch.optim.Optimizer) -> None:
        """Take the current weights and optimiser state (references, not copies: :meth:`save` writes them at once)."""
        self.model = model.state_dict()
        self.ema = ema.state_dict() if ema is not None else {}
        self.optimizer = optimizer.state_dict()

    def restore(self, *, model: nn.Module, ema: AveragedModel | None, optimizer: torch.optim.Optimizer) -> None:
        """Load the saved weights and optimiser state into a freshly built run."""
        model.load_state_dict(self.model)
        if ema is not None:
            ema.load_state_dict(self.ema)
        optimizer.load_state_dict(self.optimizer)

    def save(self, path: Path) -> None:
        save_training_state(path, {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> TrainingState:
        saved = load_training_state(path)
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in saved]
        unexpected = sorted(set(saved) - set(names))
        if missing or unexpected:
            raise BundleError(
                f"the training state {path} is not one this code writes (missing {missing}, unexpected "
                f"{unexpected}); delete it to start the run afresh"
            )
        return cls(**saved)


def resume_state(out: Path, config: TrainConfig) -> TrainingState | None:
    """The state to continue from in the run folder ``out``, or ``None`` for a fresh run.

    A folder that holds a run of another config is refused rather than silently mixed.
    """
    path = out / STATE_FILE
    if not path.exists():
        return None
    state = TrainingState.load(path)
    if state.config != config.model_dump():
        raise ConfigError(
            f"{out} holds a run with a different config ({out / 'config.json'}); use another --out folder "
            "or delete it to start afresh"
        )
    return state
