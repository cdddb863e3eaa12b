"""The post-training class call: plain or class-balanced arg-max, chosen on hand-built validation probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skintriage.data.records import Manifest
from skintriage.training.config import TrainConfig
from skintriage.training.finish import choose_class_call, training_prior

# A training prior in which class 0 is eight times as common as either of the others.
PRIOR = np.array([0.8, 0.1, 0.1])
LABELS = np.array([0, 0, 1, 2])


def choose(probabilities: list[list[float]], prior: np.ndarray = PRIOR, labels: np.ndarray = LABELS) -> dict:
    # log-probabilities are logits whose softmax at temperature 1 gives back the probabilities
    return choose_class_call(logits=np.log(probabilities), labels=labels, prior=prior, temperature=1.0)


def test_class_balanced_wins_when_the_minority_images_lose_to_the_prior() -> None:
    decision = choose(
        [
            [0.9, 0.05, 0.05],  # class 0, right either way (0.9 / 0.8 beats 0.05 / 0.1)
            [0.9, 0.05, 0.05],
            [0.6, 0.3, 0.1],  # class 1: arg-max says 0; divided by the prior 0.75, 3, 1: right
            [0.6, 0.1, 0.3],  # class 2: likewise
        ]
    )
    assert decision["rule"] == "class_balanced"
    assert decision["validation_balanced_accuracy"] == pytest.approx({"argmax": 1 / 3, "class_balanced": 1.0})
    assert decision["training_prior"] == pytest.approx([0.8, 0.1, 0.1])


def test_plain_argmax_wins_when_dividing_by_the_prior_overturns_the_majority() -> None:
    decision = choose(
        [
            [0.5, 0.3, 0.2],  # class 0: right by arg-max; divided by the prior 0.625, 3, 2: wrong
            [0.5, 0.3, 0.2],
            [0.1, 0.8, 0.1],  # right either way
            [0.1, 0.1, 0.8],
        ]
    )
    assert decision["rule"] == "argmax"
    assert decision["validation_balanced_accuracy"] == pytest.approx({"argmax": 1.0, "class_balanced": 2 / 3})


def test_a_tie_keeps_plain_argmax_and_only_classes_present_are_averaged() -> None:
    decision = choose(
        [[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]], prior=np.full(3, 1 / 3), labels=np.array([0, 1])
    )  # a uniform prior changes nothing; class 2 has no validation image and is not averaged in
    assert decision["rule"] == "argmax"
    assert decision["validation_balanced_accuracy"] == {"argmax": 1.0, "class_balanced": 1.0}


def test_the_temperature_is_applied_before_choosing() -> None:
    # two classes, prior 0.8 / 0.2; the class-1 image has p = (0.7, 0.3): divided by the prior 0.875 < 1.5, right.
    # At T = 1/4 it sharpens to (0.7^4, 0.3^4) / sum = (0.967, 0.033): divided by the prior 1.21 > 0.16, wrong.
    logits, labels, prior = np.log([[0.99, 0.01], [0.7, 0.3]]), np.array([0, 1]), np.array([0.8, 0.2])
    at_one = choose_class_call(logits=logits, labels=labels, prior=prior, temperature=1.0)
    sharpened = choose_class_call(logits=logits, labels=labels, prior=prior, temperature=0.25)
    assert at_one["rule"] == "class_balanced"
    assert at_one["validation_balanced_accuracy"] == pytest.approx({"argmax": 0.5, "class_balanced": 1.0})
    assert sharpened["rule"] == "argmax"  # a tie
    assert sharpened["validation_balanced_accuracy"] == pytest.approx({"argmax": 0.5, "class_balanced": 0.5})


def test_the_training_prior_counts_the_training_split_of_the_model_classes_only(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "image_id": [f"i{n}" for n in range(7)],
            "image": [f"i{n}.png" for n in range(7)],  # never read
            "source": "unit",
            "diagnosis": ["nv", "nv", "nv", "mel", "mel", "bkl", "nv"],
            "acquisition": "dermoscopic",
            "split": ["train", "train", "train", "train", "val", "train", "test"],
        }
    )
    config = TrainConfig(name="unit", sources=[{"name": "folder", "root": "unused"}], imbalance="none")
    prior = training_prior(config, Manifest(frame, tmp_path), ["mel", "nv"])  # bkl is not a class of the model
    assert prior == pytest.approx([1 / 4, 3 / 4])  # train: one mel, three nv
