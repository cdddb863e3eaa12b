"""Re-score the bundled model on every evaluation set of its training run, without training it again.

Usage (from the project root): python experiments/pretrained_lite0/rescore.py [--data-root DIR]

For a change to what an evaluation measures (a new entry in ``metrics.json``, a new plot), not to the model:
the validation split and the held-out test sets are rebuilt from configs/pretrained_lite0.yaml (the same
seeded split the run used; checked against the committed splits.csv) and evaluated as ``skintriage train``'s
last step does, into experiments/pretrained_lite0/eval/<set>/. The model, its thresholds and model.json are
untouched, so every number that was there before comes back unchanged (``git diff`` shows only additions).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.evaluation.evaluate import evaluate_bundle, write_evaluation
from skintriage.model.bundle import load_bundle
from skintriage.training.config import load_config
from skintriage.training.data import training_manifest
from skintriage.training.finish import held_out_results

HERE = Path(__file__).resolve().parent
CONFIG = Path("configs/pretrained_lite0.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, help="overrides the config's data_root")
    args = parser.parse_args()
    config = load_config(CONFIG)
    bundle = load_bundle(DEFAULT_BUNDLE)
    manifest = training_manifest(config, data_root=args.data_root, progress=True).manifest
    committed = pd.read_csv(HERE / "splits.csv")
    keys = ["source", "image_id", "split"]
    rebuilt = manifest.frame[keys].merge(committed[keys], on=keys[:2], how="outer")
    if len(rebuilt) != len(committed) or (rebuilt.split_x != rebuilt.split_y).any():
        raise SystemExit(f"the rebuilt split differs from {HERE / 'splits.csv'}: the data or the split code changed")
    val = manifest.where(split="val", diagnoses=bundle.classes)
    results = {
        "validation": evaluate_bundle(bundle, val, name="validation", embeddings=True),
        **held_out_results(config, bundle, manifest, data_root=args.data_root, progress=True),
    }
    for name, result in results.items():
        print(f"{name}: {write_evaluation(result, HERE / 'eval' / name)}")


if __name__ == "__main__":
    main()
