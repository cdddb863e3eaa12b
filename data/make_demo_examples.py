"""Write data/demo_examples.csv: the demo's labelled examples, picked from the bundled model's test splits.

    python data/make_demo_examples.py [--data-root ../shared/data]

Clinical photos come from the clinical sources' held-out test split (the same split the bundle was
evaluated on), dermoscopic images from the official ISIC 2018 test set; one image per diagnosis, the
first by path, so the list is reproducible. The list names files; it ships no image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.sources import get_source
from skintriage.data.taxonomy import DIAGNOSES
from skintriage.model.bundle import load_bundle
from skintriage.training.config import TrainConfig
from skintriage.training.loop import training_manifest
from skintriage.ui.examples import DEFAULT_LIST, DemoExample, write_examples

CLINICAL = ("bcc", "scc", "mel", "other_malignant", "vasc", "df", "other_benign", "nv")
# skipped for a demo: genital sites, and atlas files whose name says another condition than their folder
# (DermNet keeps some differential-diagnosis photos under a topic: "dermatofibroma/basal-cell-carcinoma-0024.jpg")
OTHER_CONDITION_WORDS = ("carcinoma", "melanoma", "naevus", "nevus", "wart", "keratosis")


def suits_a_demo(image: str, label: str) -> bool:
    name, label = Path(image).stem.lower(), label.lower()
    return "anogenital" not in label and not any(w in name and w not in label for w in OTHER_CONDITION_WORDS)


DERMOSCOPIC = ("mel", "bcc", "nv", "bkl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    data_root = args.data_root.resolve()
    config = TrainConfig.model_validate(load_bundle(DEFAULT_BUNDLE).metadata["training"]["config"])
    manifest = training_manifest(config, data_root=data_root, progress=True).manifest
    frame = manifest.frame
    clinical = frame[(frame.split == "test") & (frame.acquisition == "clinical")].sort_values("image")
    examples = []
    for code in CLINICAL:
        rows = clinical[clinical.diagnosis == code]
        row = rows[[suits_a_demo(i, label) for i, label in zip(rows.image, rows.raw_label, strict=True)]].iloc[0]
        examples.append(DemoExample(Path(manifest.root) / row.image, code, "clinical", row.source, row.raw_label))
    isic = get_source("isic2018_test").load(data_root / "ham10000_isic2018_224", progress=False).frame
    isic = isic[isic.score_weight > 0].sort_values("image")
    for code in DERMOSCOPIC:
        row = isic[isic.diagnosis == code].iloc[0]
        path = Path(data_root / "ham10000_isic2018_224") / row.image
        examples.append(DemoExample(path, code, "dermoscopic", "isic2018_test", DIAGNOSES[code].name))
    write_examples(DEFAULT_LIST, examples, data_root)
    print(f"wrote {len(examples)} examples to {DEFAULT_LIST}")


if __name__ == "__main__":
    main()
