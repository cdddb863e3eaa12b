"""How the referral engine and its uncertainty gate behave on real images, with no clinical context.

Sets: the ISIC 2018 test set (dermoscopic, 1,511 scored images), the DermNet held-out test split
(clinical photos, 184; watermark corner masked as in training), and non-skin photographs (the sample
images shipped with scikit-image and matplotlib: people, animals, objects, text, microscopy).

Writes results.json, results.md and levels.png / ood_distance.png next to this file. Usage:

    python experiments/referral_engine/run.py [--checkpoint models/default] [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from skintriage import metrics
from skintriage.checkpoint import DEFAULT_BUNDLE
from skintriage.config import TrainConfig
from skintriage.data.images import decode_image
from skintriage.data.sources import get_source
from skintriage.predict import Prediction, Predictor
from skintriage.train import training_manifest

HERE = Path(__file__).resolve().parent
LEVELS = ("routine", "refer", "urgent")


def non_skin_photos() -> list[Path]:
    """Real photographs that are not skin: scikit-image's and matplotlib's bundled sample images."""
    folders = [Path(matplotlib.get_data_path()) / "sample_data"]
    try:
        import skimage

        folders.append(Path(skimage.__file__).parent / "data")
    except ImportError:
        pass
    photos = []
    for folder in folders:
        photos += [
            p for p in sorted(folder.iterdir()) if p.suffix.lower() in {".png", ".jpg"} and p.stat().st_size > 4000
        ]
    return photos


def predict_all(predictor: Predictor, paths: list[Path], *, artefact: str | None, name: str) -> list[Prediction]:
    out: list[Prediction] = []
    for start in tqdm(range(0, len(paths), 64), desc=name):
        chunk = paths[start : start + 64]
        images = [decode_image(p, name=str(p)) for p in chunk]
        out += predictor.predict_batch(images, files=[str(p) for p in chunk], artefact=artefact)
    return out


def summarise(predictions: list[Prediction], malignant: np.ndarray | None) -> dict:
    levels = np.array([p.referral.level for p in predictions])
    distance = np.array([p.uncertainty.ood_distance for p in predictions])
    row = {
        "n_images": len(predictions),
        "share": {level: float(np.mean(levels == level)) for level in LEVELS},
        "out_of_distribution": float(np.mean([p.uncertainty.out_of_distribution for p in predictions])),
        "low_confidence": float(np.mean([p.uncertainty.low_confidence for p in predictions])),
        "cannot_assess": float(np.mean([p.uncertainty.cannot_assess for p in predictions])),
        "median_ood_distance": float(np.median(distance)),
    }
    if malignant is not None:
        referred = levels != "routine"
        score = np.array([p.malignancy_probability for p in predictions])
        row |= {
            "n_malignant": int(malignant.sum()),
            "engine_sensitivity": float(referred[malignant].mean()),
            "engine_specificity": float((~referred[~malignant]).mean()),
            "urgent_ppv": float(malignant[levels == "urgent"].mean()) if (levels == "urgent").any() else None,
            "urgent_sensitivity": float((levels[malignant] == "urgent").mean()),
            "referral_auc": float(metrics.referral_roc_auc(score, malignant)),
        }
    return row


def ood_auroc(in_distribution: np.ndarray, out: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(in_distribution), bool), np.ones(len(out), bool)]
    return float(metrics.referral_roc_auc(np.r_[in_distribution, out], labels))


def sets(predictor: Predictor, data_root: Path) -> Iterator[tuple[str, list[Prediction], np.ndarray | None]]:
    isic = get_source("isic2018_test").load(data_root / "ham10000_isic2018_224", progress=False).with_images()
    frame = isic.frame[isic.frame.score_weight > 0]
    paths = [Path(isic.root) / p for p in frame.image]
    yield (
        "ISIC 2018 test (dermoscopic)",
        predict_all(predictor, paths, artefact=None, name="isic"),
        (frame.triage_group.isin(["mcc", "cutaneous_metastasis", "other_malignant"]).to_numpy()),
    )
    config = TrainConfig.model_validate(predictor.bundle.metadata["training"]["config"])
    manifest = training_manifest(config, data_root=data_root, progress=False).manifest
    test = manifest.frame[(manifest.frame.split == "test") & (manifest.frame.source == "dermnet")]
    paths = [Path(manifest.root) / p for p in test.image]
    yield (
        "DermNet held-out test (clinical)",
        predict_all(predictor, paths, artefact="corner_watermark", name="dermnet"),
        (test.triage_group.isin(["mcc", "cutaneous_metastasis", "other_malignant"]).to_numpy()),
    )
    yield "Non-skin photographs", predict_all(predictor, non_skin_photos(), artefact=None, name="non-skin"), None


def write_plots(results: dict[str, list[Prediction]]) -> None:
    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    left = np.zeros(len(names))
    for level, colour in zip(LEVELS, ("#15803d", "#b45309", "#b91c1c"), strict=True):
        share = np.array([np.mean([p.referral.level == level for p in results[n]]) for n in names])
        ax.barh(names, share, left=left, color=colour, label=level)
        left += share
    ax.set_xlabel("share of images")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Referral level without clinical context")
    fig.tight_layout()
    fig.savefig(HERE / "levels.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    threshold = next(iter(results.values()))[0].uncertainty.ood_threshold
    for name in names:
        ax.hist([p.uncertainty.ood_distance for p in results[name]], bins=40, alpha=0.55, density=True, label=name)
    ax.axvline(threshold, color="black", linestyle="--", label=f"OOD threshold {threshold:.1f}")
    ax.set_xlabel("Mahalanobis distance to the nearest class mean")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "ood_distance.png", dpi=120)
    plt.close(fig)


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        "# Referral engine on real images (no clinical context)",
        "",
        f"Model `{meta['model']}`; referral threshold {meta['referral_threshold']:.3f}, urgent threshold "
        f"{meta['urgent_threshold']:.3f}; OOD distance threshold {meta['ood_threshold']:.1f} (validation quantile "
        f"{meta['ood_quantile']}), entropy threshold {meta['entropy_threshold']:.3f} (validation quantile "
        f"{meta['low_confidence_quantile']}). Regenerate: `python experiments/referral_engine/run.py`.",
        "",
        "| set | images | routine | refer | urgent | out of distribution | low confidence | cannot assess |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["sets"].items():
        share = row["share"]
        lines.append(
            f"| {name} | {row['n_images']} | {share['routine']:.3f} | {share['refer']:.3f} | {share['urgent']:.3f} | "
            f"{row['out_of_distribution']:.3f} | {row['low_confidence']:.3f} | {row['cannot_assess']:.3f} |"
        )
    lines += [
        "",
        "| set | malignant | engine sensitivity (refer or urgent) | engine specificity | urgent sensitivity | urgent PPV "
        "| threshold-only sensitivity / specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["sets"].items():
        if "n_malignant" not in row:
            continue
        ppv = "n/a" if row["urgent_ppv"] is None else f"{row['urgent_ppv']:.3f}"
        lines.append(
            f"| {name} | {row['n_malignant']} | {row['engine_sensitivity']:.3f} | {row['engine_specificity']:.3f} | "
            f"{row['urgent_sensitivity']:.3f} | {ppv} | {row['threshold_only'][0]:.3f} / "
            f"{row['threshold_only'][1]:.3f} |"
        )
    lines += [
        "",
        "OOD detection AUROC (Mahalanobis distance, ISIC 2018 test as in-distribution):",
        "",
    ]
    lines += [f"- versus {name}: {value:.3f}" for name, value in summary["ood_auroc"].items()]
    lines += [
        "",
        "![levels](levels.png)",
        "",
        "![OOD distance](ood_distance.png)",
        "",
        "No Merkel cell carcinoma or cutaneous metastasis image is available to measure how the engine treats them; "
        "these figures describe common lesions and non-skin photos only.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    predictor = Predictor.load(args.checkpoint)
    policy, gate = predictor.policy, predictor.gate
    results, malignant_by_set = {}, {}
    for name, predictions, malignant in sets(predictor, args.data_root):
        results[name], malignant_by_set[name] = predictions, malignant
    summary = {"sets": {}, "ood_auroc": {}}
    for name, predictions in results.items():
        row = summarise(predictions, malignant_by_set[name])
        if malignant_by_set[name] is not None:
            score = np.array([p.malignancy_probability for p in predictions])
            row["threshold_only"] = metrics.sensitivity_specificity_at_threshold(
                score, malignant_by_set[name], policy.referral_threshold
            )
        summary["sets"][name] = row
    names = list(results)
    reference = np.array([p.uncertainty.ood_distance for p in results[names[0]]])
    for name in names[1:]:
        summary["ood_auroc"][name] = ood_auroc(reference, np.array([p.uncertainty.ood_distance for p in results[name]]))
    meta = {
        "model": predictor.bundle.metadata.get("name"),
        "referral_threshold": policy.referral_threshold,
        "urgent_threshold": policy.urgent_threshold,
        **{
            k: getattr(gate, k)
            for k in ("ood_threshold", "ood_quantile", "entropy_threshold", "low_confidence_quantile")
        },
    }
    summary["meta"] = meta
    summary["non_skin_files"] = [
        {"file": Path(p.file).name, "level": p.referral.level, "ood_distance": round(p.uncertainty.ood_distance, 2),
         "cannot_assess": p.uncertainty.cannot_assess}
        for p in results[names[-1]]
    ]  # fmt: skip
    (HERE / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (HERE / "results.md").write_text(markdown(summary, meta), encoding="utf-8")
    write_plots(results)
    print(markdown(summary, meta))


if __name__ == "__main__":
    main()
