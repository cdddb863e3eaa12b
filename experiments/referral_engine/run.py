"""How the referral engine and its uncertainty gate behave on real images, with and without clinical context.

Sets, each split by how it was photographed (dermoscopic / clinical) and by truth (benign / malignant):

* validation: the bundle's own validation images (HAM10000 and the clinical sources' validation splits);
* test: the ISIC 2018 test set (dermoscopic) and the clinical sources' held-out test splits;
* non-skin photographs (the sample images shipped with scikit-image and matplotlib), for the gate.

Every image is predicted once, on the deployed path (photo type read by the model, source artefacts removed
as in training); each clinical-context scenario is then the same :func:`skintriage.triage.referral.decide` the demo
runs, applied to those probabilities and uncertainties, so the scenarios differ only in the context. The
scenario table is the policy measured: the share of benign and of malignant images sent at each level.
A second table measures the MCC-mimic classes on validation (which class calls the malignant images the
threshold misses get, and how many benign images each class call would add to a referral).

Writes results.json, results.md, levels.png, scenarios.png and ood_distance.png next to this file. Usage:

    python experiments/referral_engine/run.py [--checkpoint src/skintriage/model/default] [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from skintriage import metrics
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.images import decode_image
from skintriage.data.sources import get_source
from skintriage.data.taxonomy import DIAGNOSES, MALIGNANT_GROUPS
from skintriage.inference.predictor import Prediction, Predictor
from skintriage.training.config import TrainConfig
from skintriage.training.data import training_manifest
from skintriage.triage.referral import ClinicalContext, Level

HERE = Path(__file__).resolve().parent
LEVELS = tuple(Level)  # routine, refer, urgent: the engine's order
COLOURS = ("#15803d", "#b45309", "#b91c1c")
OLDER = {"age": 72, "site": "face", "asymptomatic": True}
SCENARIOS = {  # name -> the clinical context every image of the set is given
    "no context": ClinicalContext(),
    "age 72, face, asymptomatic": ClinicalContext(**OLDER),
    "the same + new or enlarging nodule": ClinicalContext(**OLDER, new_or_enlarging_nodule=True),
    "the same + rapid growth": ClinicalContext(**OLDER, new_or_enlarging_nodule=True, rapid_growth=True),
    "known internal cancer + new nodule": ClinicalContext(
        known_other_primary_cancer=True, new_or_enlarging_nodule=True
    ),
}
MIMIC_CANDIDATES = ("vasc", "other_benign", "non_neoplastic", "df", "bkl", "nv")


@dataclass
class ImageSet:
    """Predicted images of one split and photo type, with the truth."""

    name: str
    split: str  # "validation", "test", "non-skin"
    acquisition: str | None
    predictions: list[Prediction]
    malignant: np.ndarray | None  # None: no lesion truth (non-skin photos)


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


def predict_all(predictor: Predictor, paths: list[Path], artefacts: list[str | None], *, name: str) -> list[Prediction]:
    """Predictions in the order of ``paths``, batched by artefact (one remover per batch)."""
    out: dict[int, Prediction] = {}
    for artefact in dict.fromkeys(artefacts):
        rows = [i for i, a in enumerate(artefacts) if a == artefact]
        for start in tqdm(range(0, len(rows), 64), desc=f"{name} ({artefact or 'as is'})"):
            chunk = rows[start : start + 64]
            images = [decode_image(paths[i], name=str(paths[i])) for i in chunk]
            predicted = predictor.predict_batch(images, files=[str(paths[i]) for i in chunk], artefact=artefact)
            out.update(zip(chunk, predicted, strict=True))
    return [out[i] for i in range(len(paths))]


def image_sets(predictor: Predictor, data_root: Path) -> list[ImageSet]:
    metadata = predictor.bundle.metadata
    masked = set(metadata["preprocessing"].get("mask_watermark_sources", []))
    config = TrainConfig.model_validate(metadata["training"]["config"])
    manifest = training_manifest(config, data_root=data_root, progress=False).manifest
    frame, root = manifest.frame, Path(manifest.root)
    sets = []
    isic = get_source("isic2018_test").load(data_root / "ham10000_isic2018_224", progress=False).with_images()
    scored = isic.frame[isic.frame.score_weight > 0]
    chosen = [
        ("validation", "dermoscopic", frame[(frame.split == "val") & (frame.acquisition != "clinical")]),
        ("validation", "clinical", frame[(frame.split == "val") & (frame.acquisition == "clinical")]),
        ("test", "dermoscopic", None),
        ("test", "clinical", frame[(frame.split == "test") & (frame.acquisition == "clinical")]),
    ]
    for split, acquisition, rows in chosen:
        if rows is None:  # the ISIC 2018 test set, its own source
            rows, base = scored, Path(isic.root)
        else:
            base = root
        paths = [base / p for p in rows.image]
        artefacts = [get_source(s).artefact if s in masked else None for s in rows.source]
        name = f"{split} {acquisition}"
        sets.append(
            ImageSet(
                name,
                split,
                acquisition,
                predict_all(predictor, paths, artefacts, name=name),
                rows.triage_group.isin([g.value for g in MALIGNANT_GROUPS]).to_numpy(),
            )
        )
    photos = non_skin_photos()
    sets.append(ImageSet("non-skin photographs", "non-skin", None, predict_all(
        predictor, photos, [None] * len(photos), name="non-skin"), None))  # fmt: skip
    return sets


def levels_under(predictor: Predictor, image_set: ImageSet, context: ClinicalContext) -> np.ndarray:
    """The level of every image of the set when the clinician gives ``context`` (same probabilities)."""
    return np.array(
        [
            predictor.decide(p.probabilities, p.uncertainty, context, acquisition=p.acquisition).level
            for p in image_set.predictions
        ]
    )


def shares(levels: np.ndarray) -> dict[str, float]:
    return {level: float(np.mean(levels == level)) if len(levels) else float("nan") for level in LEVELS}


def scenario_table(predictor: Predictor, sets: list[ImageSet]) -> list[dict]:
    rows = []
    for image_set in sets:
        if image_set.malignant is None:
            continue
        for scenario, context in SCENARIOS.items():
            levels = levels_under(predictor, image_set, context)
            for truth, mask in (("benign", ~image_set.malignant), ("malignant", image_set.malignant)):
                rows.append(
                    {
                        "scenario": scenario,
                        "split": image_set.split,
                        "acquisition": image_set.acquisition,
                        "truth": truth,
                        "n_images": int(mask.sum()),
                        "share": shares(levels[mask]),
                    }
                )
    return rows


def no_context_summary(image_set: ImageSet) -> dict:
    predictions = image_set.predictions
    levels = np.array([p.referral.level for p in predictions])
    row = {
        "n_images": len(predictions),
        "share": shares(levels),
        "out_of_distribution": float(np.mean([p.uncertainty.out_of_distribution for p in predictions])),
        "low_confidence": float(np.mean([p.uncertainty.low_confidence for p in predictions])),
        "cannot_assess": float(np.mean([p.uncertainty.cannot_assess for p in predictions])),
    }
    if image_set.malignant is not None:
        malignant, referred = image_set.malignant, levels != "routine"
        score = np.array([p.malignancy_probability for p in predictions])
        row |= {
            "n_malignant": int(malignant.sum()),
            "engine_sensitivity": float(referred[malignant].mean()),
            "engine_specificity": float((~referred[~malignant]).mean()),
            "urgent_sensitivity": float((levels[malignant] == "urgent").mean()),
            "urgent_ppv": float(malignant[levels == "urgent"].mean()) if (levels == "urgent").any() else None,
            "referral_auc": float(metrics.referral_roc_auc(score, malignant)),
        }
    return row


def mimic_table(predictor: Predictor, sets: list[ImageSet]) -> list[dict]:
    """On validation: the most likely class of malignant images below their referral threshold, and of benign ones.

    A benign class is worth a place among the MCC mimics when the malignant images the threshold misses are
    often called it (the mimic rule, with context, would catch them); its cost is the share of benign images
    with that call, each of which the rule would refer when the same context is given.
    """
    rows = []
    for image_set in sets:
        if image_set.split != "validation":
            continue
        predictions, malignant = image_set.predictions, image_set.malignant
        calls = np.array([max(p.probabilities, key=p.probabilities.get) for p in predictions])
        below = np.array([p.malignancy_probability < predictor.policy_for(p.acquisition).referral_threshold
                          for p in predictions])  # fmt: skip
        missed = malignant & below
        for code in MIMIC_CANDIDATES:
            rows.append(
                {
                    "acquisition": image_set.acquisition,
                    "class": code,
                    "n_missed_malignant": int(missed.sum()),
                    "missed_malignant_called_this": float(np.mean(calls[missed] == code)) if missed.any() else 0.0,
                    "benign_called_this_below_threshold": float(np.mean(calls[~malignant & below] == code)),
                }
            )
    return rows


def ood_auroc(in_distribution: np.ndarray, out: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(in_distribution), bool), np.ones(len(out), bool)]
    return float(metrics.referral_roc_auc(np.r_[in_distribution, out], labels))


def stacked_bars(ax, names: list[str], table: list[dict[str, float]], title: str) -> None:
    left = np.zeros(len(names))
    for level, colour in zip(LEVELS, COLOURS, strict=True):
        share = np.array([row[level] for row in table])
        ax.barh(names, share, left=left, color=colour, label=level)
        left += share
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()


def write_plots(predictor: Predictor, sets: list[ImageSet], scenarios: list[dict]) -> None:
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    stacked_bars(ax, [s.name for s in sets], [shares(np.array([p.referral.level for p in s.predictions]))
                                               for s in sets], "Referral level without clinical context")  # fmt: skip
    ax.set_xlabel("share of images")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(HERE / "levels.png", dpi=120)

    fig = Figure(figsize=(11, 5.2))
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    for row_axes, acquisition in zip(axes, ("dermoscopic", "clinical"), strict=True):
        for ax, truth in zip(row_axes, ("benign", "malignant"), strict=True):
            picked = [r for r in scenarios if r["split"] == "test" and r["acquisition"] == acquisition
                      and r["truth"] == truth]  # fmt: skip
            n = picked[0]["n_images"] if picked else 0
            stacked_bars(ax, [r["scenario"] for r in picked], [r["share"] for r in picked],
                         f"test, {acquisition}, {truth} (n={n})")  # fmt: skip
    axes[0][0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.08), ncol=3, fontsize=8, frameon=False)
    for ax in axes[1]:
        ax.set_xlabel("share of images at each level")
    fig.suptitle("The same test images under each clinical-context scenario", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "scenarios.png", dpi=120)

    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    threshold = sets[0].predictions[0].uncertainty.ood_threshold
    for image_set in sets:
        distances = [p.uncertainty.ood_distance for p in image_set.predictions]
        ax.hist(distances, bins=40, alpha=0.5, density=True, label=image_set.name)
    ax.axvline(threshold, color="black", linestyle="--", label=f"OOD threshold {threshold:.1f}")
    ax.set_xlabel("Mahalanobis distance to the nearest class mean")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "ood_distance.png", dpi=120)


def fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def markdown(summary: dict) -> str:
    meta = summary["meta"]
    lines = [
        "# Referral engine on real images",
        "",
        f"Model `{meta['model']}`; photo type read by the model (the demo's default), thresholds per photo type "
        f"(dermoscopic referral {meta['thresholds']['dermoscopic'][0]:.3f} / urgent "
        f"{meta['thresholds']['dermoscopic'][1]:.3f}; clinical {meta['thresholds']['clinical'][0]:.3f} / "
        f"{meta['thresholds']['clinical'][1]:.3f}); OOD quantile {meta['ood_quantile']}, entropy quantile "
        f"{meta['low_confidence_quantile']}. Regenerate: `python experiments/referral_engine/run.py`.",
        "",
        "## The policy under clinical context",
        "",
        "Every image of a set is given the same context; the probabilities are unchanged, so only the context rules "
        "move images between levels. Shares of **benign** and of **malignant** images at each level "
        "(routine / refer / urgent):",
        "",
        "| scenario | split | photo type | benign n | benign routine / refer / urgent | malignant n | "
        "malignant routine / refer / urgent |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = summary["scenarios"]
    for scenario in SCENARIOS:
        for split in ("validation", "test"):
            for acquisition in ("dermoscopic", "clinical"):
                pick = {r["truth"]: r for r in rows if (r["scenario"], r["split"], r["acquisition"]) ==
                        (scenario, split, acquisition)}  # fmt: skip
                if not pick:
                    continue
                cells = []
                for truth in ("benign", "malignant"):
                    share = pick[truth]["share"]
                    cells += [str(pick[truth]["n_images"]), " / ".join(fmt(share[level]) for level in LEVELS)]
                lines.append(f"| {scenario} | {split} | {acquisition} | {' | '.join(cells)} |")
    lines += [
        "",
        "![scenarios](scenarios.png)",
        "",
        "## Without clinical context",
        "",
        "| set | images | routine | refer | urgent | out of distribution | low confidence | cannot assess |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["sets"].items():
        share = row["share"]
        lines.append(
            f"| {name} | {row['n_images']} | {fmt(share['routine'])} | {fmt(share['refer'])} | {fmt(share['urgent'])} "
            f"| {fmt(row['out_of_distribution'])} | {fmt(row['low_confidence'])} | {fmt(row['cannot_assess'])} |"
        )
    lines += [
        "",
        "| set | malignant | engine sensitivity (refer or urgent) | engine specificity | urgent sensitivity | "
        "urgent PPV | referral AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["sets"].items():
        if "n_malignant" in row:
            lines.append(
                f"| {name} | {row['n_malignant']} | {fmt(row['engine_sensitivity'])} | "
                f"{fmt(row['engine_specificity'])} | {fmt(row['urgent_sensitivity'])} | {fmt(row['urgent_ppv'])} | "
                f"{fmt(row['referral_auc'])} |"
            )
    lines += ["", "OOD detection AUROC (Mahalanobis distance, test dermoscopic as in-distribution):", ""]
    lines += [f"- versus {name}: {value:.3f}" for name, value in summary["ood_auroc"].items()]
    lines += [
        "",
        "![levels](levels.png)",
        "",
        "![OOD distance](ood_distance.png)",
        "",
        "## MCC-mimic classes, measured on validation",
        "",
        "For each candidate class: the share of the malignant validation images below the referral threshold (the "
        "ones the image rules miss) that the model calls this class, and the share of benign validation images "
        "below the threshold with this call (each would be referred by the mimic rule when the same context is "
        "given).",
        "",
        "| photo type | class | missed malignant (n) | missed malignant with this call | benign below threshold with "
        "this call |",
        "|---|---|---|---|---|",
    ]
    for row in summary["mimic"]:
        lines.append(
            f"| {row['acquisition']} | {DIAGNOSES[row['class']].name} | {row['n_missed_malignant']} | "
            f"{fmt(row['missed_malignant_called_this'])} | {fmt(row['benign_called_this_below_threshold'])} |"
        )
    lines += [
        "",
        "No Merkel cell carcinoma or cutaneous metastasis image is available to measure how the engine treats them; "
        "these figures describe common lesions and non-skin photos only. The context scenarios give every image the "
        "same context, which no real clinic does: they show what each rule costs in benign referrals, not the case "
        "mix of a clinic.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    predictor = Predictor.load(args.checkpoint)
    sets = image_sets(predictor, args.data_root)
    scenarios = scenario_table(predictor, sets)
    reference = next(s for s in sets if (s.split, s.acquisition) == ("test", "dermoscopic"))
    distances = {s.name: np.array([p.uncertainty.ood_distance for p in s.predictions]) for s in sets}
    summary = {
        "meta": {
            "model": predictor.bundle.metadata.get("name"),
            "thresholds": {
                kind: [policy.referral_threshold, policy.urgent_threshold]
                for kind, policy in predictor.policies.items()
            },
            "ood_quantile": predictor.gate.ood_quantile,
            "low_confidence_quantile": predictor.gate.low_confidence_quantile,
        },
        "scenarios": scenarios,
        "sets": {s.name: no_context_summary(s) for s in sets},
        "ood_auroc": {
            s.name: ood_auroc(distances[reference.name], distances[s.name]) for s in sets if s is not reference
        },
        "mimic": mimic_table(predictor, sets),
        "non_skin_files": [
            {"file": Path(p.file).name, "level": p.referral.level, "cannot_assess": p.uncertainty.cannot_assess}
            for p in sets[-1].predictions
        ],
    }
    (HERE / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (HERE / "results.md").write_text(markdown(summary), encoding="utf-8")
    write_plots(predictor, sets, scenarios)
    print(markdown(summary))


if __name__ == "__main__":
    main()
