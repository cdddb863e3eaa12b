"""The ablation table: what ImageNet pretraining and the new clinical data are each worth, on the same test sets.

Usage (from the project root, after experiments/ablation/run.sh trained the cells):
    python experiments/ablation/evaluate.py [--runs runs]

Every cell is a finished ``skintriage train`` run folder with a calibrated bundle (thresholds fitted on
its own validation split). Every cell is scored on the same two test sets:

* ``isic2018_test``: the official ISIC 2018 Task 3 test set (dermoscopic, 1,511 scored images);
* ``clinical_test``: the held-out project split of every clinical source of the bundled model's config
  (configs/pretrained_lite0.yaml: DermNet, DermNet extra, Fitzpatrick17k, SD-198, MED-NODE), minus any
  image the cell itself trained or validated on (none is expected: the per-source splits are seeded
  alike; the count is printed and recorded).

Writes experiments/ablation/<cell>/<set>/metrics.json, results.json and results.md. Test sets choose nothing.
A cell whose run folder is absent keeps its row from the committed results.json (run folders are not
committed: each cell takes about 35 minutes to train on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from skintriage.common.atomic import atomic_write_text
from skintriage.data.records import Manifest
from skintriage.data.sources import get_source
from skintriage.evaluation.evaluate import evaluate_bundle
from skintriage.model.bundle import load_bundle
from skintriage.training.config import load_config
from skintriage.training.data import training_manifest
from skintriage.training.loop import SPLITS_FILE

HERE = Path(__file__).resolve().parent
MAIN_CONFIG = Path("configs/pretrained_lite0.yaml")
CELLS = {  # run folder under --runs -> (backbone start, training data)
    "pretrained_lite0": ("ImageNet (EfficientNet-Lite0)", "HAM10000 + 5 clinical sources"),
    "ablation_pretrained_ham_dermnet": ("ImageNet (EfficientNet-Lite0)", "HAM10000 + DermNet only"),
    "ablation_scratch_all": ("from scratch (EfficientNet-Lite0)", "HAM10000 + 5 clinical sources"),
}


def test_sets(data_root: Path | None = None) -> dict[str, Manifest]:
    """The ISIC 2018 test set and the pooled clinical held-out split of the bundled model's config."""
    config = load_config(MAIN_CONFIG)
    manifest = training_manifest(config, data_root=data_root, progress=False).manifest
    frame = manifest.frame
    clinical = frame[(frame.split == "test") & (frame.acquisition == "clinical")].reset_index(drop=True)
    isic = next(s for s in config.test_sources if s.name == "isic2018_test")
    isic_manifest = get_source(isic.name).load(config.source_root(isic, data_root)).with_images()
    return {"isic2018_test": isic_manifest, "clinical_test": Manifest(clinical, manifest.root)}


def unseen(manifest: Manifest, run: Path) -> tuple[Manifest, int]:
    """``manifest`` without the images the run trained or validated on (by image id), and how many were dropped."""
    splits = pd.read_csv(run / SPLITS_FILE)
    seen = set(splits.loc[splits.split.isin(["train", "val"]), "image_id"])
    keep = ~manifest.frame["image_id"].isin(seen)
    return Manifest(manifest.frame[keep].reset_index(drop=True), manifest.root), int((~keep).sum())


def headline(metrics: dict) -> dict:
    """The numbers of the ablation table, each with its 95% bootstrap interval."""
    ci = metrics.get("ci95", {})
    referral = metrics["referral"]
    return {
        "n_images": metrics["n_images"],
        "balanced_accuracy": [metrics["balanced_accuracy"], ci.get("balanced_accuracy")],
        "macro_auc": [metrics["macro_auc"], ci.get("macro_auc")],
        "ece": [metrics["ece"], ci.get("ece")],
        "referral_auc": [referral["auc"], ci.get("referral_auc")],
        "referral_sensitivity": [referral["sensitivity"], ci.get("referral_sensitivity")],
        "referral_specificity": [referral["specificity"], ci.get("referral_specificity")],
        "threshold": referral["threshold"],
        # as the predictor refers: each image at its acquisition type's temperature and thresholds (no interval)
        "deployed": (metrics.get("referral_per_acquisition") or {}).get("all"),
    }


def deployed(value: dict | None) -> str:
    if not value or "sensitivity" not in value:
        return "n/a"
    return f"{value['sensitivity']:.3f} / {value['specificity']:.3f}"


def deployed_ece(value: dict | None) -> str:
    """ECE at each image's acquisition-type temperature ("n/a" for a cell scored before it was recorded)."""
    return "n/a" if not value or value.get("ece") is None else f"{value['ece']:.3f}"


def cell(value: list) -> str:
    number, interval = value
    if number is None:
        return "n/a"
    return f"{number:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{number:.3f}"


def markdown(results: dict) -> str:
    lines = [
        "# Ablation: ImageNet pretraining and the new clinical data",
        "",
        "Same test sets for every cell; thresholds and temperatures fitted on each cell's own validation split "
        "(pooled for the headline columns; the *deployed* columns refer each image at the temperature and "
        'thresholds of the acquisition type the bundle\'s classifier reads, as the demo does; "n/a": a cell scored '
        "before the deployed ECE was recorded, whose run folder is gone). 95% percentile bootstrap "
        "intervals in brackets; resampling duplicates images, which makes ECE's bins noisier and biases it upward, "
        "so an ECE interval can lie wholly above its point estimate. "
        "Regenerate: `python experiments/ablation/evaluate.py` (after `bash experiments/ablation/run.sh`).",
        "",
        "| cell | backbone start | trained on | ISIC bal. acc. | ISIC macro AUC | ISIC referral sens. / spec. | "
        "ISIC ECE | clinical referral AUC | clinical sens. / spec. | clinical ECE | "
        "deployed sens. / spec. ISIC | deployed sens. / spec. clinical | deployed ECE ISIC / clinical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        isic, clinical = entry["sets"]["isic2018_test"], entry["sets"]["clinical_test"]
        lines.append(
            f"| {name} | {entry['backbone']} | {entry['data']} | {cell(isic['balanced_accuracy'])} | "
            f"{cell(isic['macro_auc'])} | {cell(isic['referral_sensitivity'])} / {cell(isic['referral_specificity'])} | "
            f"{cell(isic['ece'])} | {cell(clinical['referral_auc'])} | {cell(clinical['referral_sensitivity'])} / "
            f"{cell(clinical['referral_specificity'])} | {cell(clinical['ece'])} | {deployed(isic['deployed'])} | "
            f"{deployed(clinical['deployed'])} | {deployed_ece(isic['deployed'])} / {deployed_ece(clinical['deployed'])} |"
        )
    lines += [
        "",
        "Images per set: "
        + ", ".join(
            f"{name}: ISIC {e['sets']['isic2018_test']['n_images']}, clinical {e['sets']['clinical_test']['n_images']} "
            f"({e['sets']['clinical_test']['dropped_as_seen']} dropped as seen in training)"
            for name, e in results.items()
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder holding the cells' run folders")
    parser.add_argument("--data-root", type=Path, help="overrides the config's data_root")
    args = parser.parse_args()
    sets = test_sets(args.data_root)
    committed = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").is_file() else {}
    results = {}
    for name, (backbone, data) in CELLS.items():
        run = args.runs / name
        if not (run / "bundle" / "model.json").is_file():
            if name in committed:  # a cell trained in an earlier session keeps its scored row
                print(f"keeping the committed row of {name}: {run / 'bundle'} is not a finished run here")
                results[name] = committed[name]
            else:
                print(f"skipping {name}: {run / 'bundle'} is not a finished run")
            continue
        bundle = load_bundle(run / "bundle")
        entry = {"backbone": backbone, "data": data, "sets": {}}
        for set_name, manifest in sets.items():
            kept, dropped = unseen(manifest, run)
            result = evaluate_bundle(bundle, kept, name=set_name)
            out = HERE / name / set_name
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")
            entry["sets"][set_name] = {**headline(result.metrics), "dropped_as_seen": dropped}
        results[name] = entry
    atomic_write_text(HERE / "results.json", json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    atomic_write_text(HERE / "results.md", table)
    print(table)


if __name__ == "__main__":
    main()
