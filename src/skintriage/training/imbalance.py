"""How training corrects class imbalance, and the class prior that leaves in the model.

The sampler's per-image draw weights are used by the training loop (:mod:`skintriage.training.loop`) to draw each
epoch; the prior they (or the loss weights) amount to is what the class-balanced class call divides by, chosen
after training (:mod:`skintriage.training.finish`). Its own module so that both read one definition.
"""

from __future__ import annotations

import numpy as np
import torch

from skintriage.common.errors import InsufficientDataError
from skintriage.data.dataset import ManifestDataset
from skintriage.training.config import TrainConfig


def sample_weights(config: TrainConfig, train_set: ManifestDataset) -> torch.Tensor:
    """Per-image draw weights of the class-balanced sampler: ``n_class ** -imbalance_power`` times
    ``n_acquisition ** -acquisition_power`` (the second keeps clinical photos from being drowned)."""
    weights = train_set.sample_weights(config.imbalance_power)
    if config.acquisition_power > 0:
        acquisition = train_set.manifest.frame["acquisition"].fillna("unknown").astype(str)
        counts = acquisition.map(acquisition.value_counts()).to_numpy(dtype=np.float64)
        weights = weights * torch.from_numpy(counts**-config.acquisition_power)
    return weights


def effective_class_prior(config: TrainConfig, train_set: ManifestDataset) -> np.ndarray:
    """The class shares the model saw in training, given how images were drawn or weighted.

    With the sampler it is each class's share of the draw weights; with loss weights
    ``n_c * w_c``; without correction the plain class counts. This is the prior a class-balanced class
    call divides by (see :mod:`skintriage.triage.calibration`).
    """
    labels = train_set.labels
    classes = train_set.num_classes
    if config.imbalance == "sampler":
        mass = np.bincount(labels, weights=sample_weights(config, train_set).numpy(), minlength=classes)
    elif config.imbalance == "loss":
        mass = train_set.class_counts() * train_set.class_weights(config.imbalance_power).numpy()
    else:
        mass = train_set.class_counts().astype(np.float64)
    if (mass <= 0).any():
        raise InsufficientDataError(f"every class needs training images to have a prior; masses were {mass.tolist()}")
    return mass / mass.sum()
