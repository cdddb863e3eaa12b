"""A generated two-type dataset (dermoscopic and clinical, mel and nv) and a tiny ResNet-18 bundle trained on it.

Enough of a real model for the whole path: calibration per acquisition type, the uncertainty gate, the
acquisition classifier, and deployment variants refitted at their own precision. The types differ far
more than the labels, and the model's head is a logistic probe on a random network's colour features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from skintriage.data.records import Manifest
from skintriage.data.sources import get_source
from skintriage.inference.batch import Outputs, bundle_dataset, loader_for, predict_outputs
from skintriage.model.bundle import Bundle, load_bundle, round_to_bundle, save_bundle
from skintriage.model.metadata import Calibration
from skintriage.model.registry import create_model, normalization_for
from skintriage.training.config import TrainConfig
from skintriage.training.gates import ReferralGates, fit_referral_gates
from skintriage.triage.calibration import calibrate

CLASSES = ["mel", "nv"]

COLOURS = {  # (acquisition, label) -> mean colour: the types differ far more than the labels
    ("dermoscopic", "mel"): (70, 45, 35),
    ("dermoscopic", "nv"): (110, 75, 50),
    ("clinical", "mel"): (200, 150, 140),
    ("clinical", "nv"): (230, 190, 170),
}
PER_GROUP = 12  # per (split, acquisition, label): 24 validation images of each type, 12 of them malignant


def write_two_type_dataset(root: Path) -> Path:
    """Images and a folder-source CSV with ``acquisition`` and ``split`` columns."""
    rng = np.random.default_rng(0)
    rows = []
    for split in ("train", "val"):
        for (kind, label), colour in COLOURS.items():
            for i in range(PER_GROUP):
                path = root / split / kind / f"{label}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, size=(40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(path)
                rows.append({"image": path.relative_to(root).as_posix(), "label": label, "acquisition": kind,
                             "split": split})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def write_untyped_folders(root: Path, *, per_class: int = 16) -> None:
    """Class folders without acquisition types (what a folder source in a training config reads)."""
    rng = np.random.default_rng(1)
    for label, colour in (("mel", (90, 50, 40)), ("nv", (150, 110, 70))):
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, size=(40, 48, 3)), 0, 255).astype(np.uint8)
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / label / f"{label}_{i}.png")


def config_for(data_root: Path, source_root: str) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "name": "two_types",
            "data_root": str(data_root),
            "sources": [{"name": "folder", "root": source_root}],
            "model": "resnet18",
            "input_size": 32,
        }
    )


def teach_the_head(bundle, train: Manifest) -> None:
    """Make a randomly initialised tiny model informative: its head becomes a logistic probe fitted on the
    training embeddings (a random network's colour features separate these images), rounded as stored."""
    outputs = predict_outputs(bundle.model, loader_for(bundle_dataset(bundle, train)), embeddings=True)
    probe = LogisticRegression(C=0.1, max_iter=5000).fit(outputs.embeddings, outputs.labels)  # P(nv)
    head = bundle.model.head
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.stack([np.zeros_like(probe.coef_[0]), probe.coef_[0]])))
        head.bias.copy_(torch.tensor([0.0, float(probe.intercept_[0])]))
    round_to_bundle(bundle.model, half=True)


@dataclass(frozen=True)
class TwoTypes:
    manifest: Manifest
    config: TrainConfig
    bundle: Bundle  # calibrated (pooled), before the gates were saved
    gates: ReferralGates
    directory: Path  # the saved bundle with its gates
    outputs: Outputs  # validation logits and embeddings
    kinds: np.ndarray  # the validation rows' recorded acquisition types
    val: Manifest


def build_two_type_bundle(root: Path) -> TwoTypes:
    """The dataset under ``root/data/images`` and a calibrated bundle with fitted gates in ``root/bundle``."""
    csv = write_two_type_dataset(root / "data" / "images")
    manifest = get_source("folder").load(root / "data" / "images", metadata=csv)
    config = config_for(root / "data", "images")
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2, input_size=32)
    preprocessing = {"input_size": 32, "normalization": normalization_for("resnet18").to_dict()}
    metadata = {"name": "two_types", "classes": CLASSES, "preprocessing": preprocessing,
                "training": {"config": config.model_dump()}}  # fmt: skip
    directory = save_bundle(root / "bundle", model, metadata, half=True)
    bundle = load_bundle(directory)
    split = {name: manifest.where(split=name) for name in ("train", "val")}
    teach_the_head(bundle, split["train"])
    val = split["val"]
    outputs = predict_outputs(bundle.model, loader_for(bundle_dataset(bundle, val)), embeddings=True)
    calibration = Calibration.model_validate(calibrate(outputs.logits, outputs.labels, CLASSES).to_dict())
    bundle.metadata = bundle.metadata.model_copy(update={"calibration": calibration})
    gates = fit_referral_gates(bundle, manifest, config, progress=False)
    gates.save(directory, bundle.model, bundle.metadata, half=True)
    kinds = val.frame["acquisition"].to_numpy(dtype=object)[outputs.rows]
    return TwoTypes(manifest, config, bundle, gates, directory, outputs, kinds, val)
