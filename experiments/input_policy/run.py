"""Issue 14: which input policy should turn a non-square photo into the model's square input?

The bundle's evaluation preprocessing (``model.json`` ``preprocessing``; :func:`skintriage.inference.batch.eval_preset`
-> :class:`skintriage.data.presets.ClassificationPresetEval`) resizes the *short* side to ``input_size``
(160) and keeps the central ``input_size`` square (``crop_fraction`` 1.0): on a 4:3 landscape photo the
left and right 12.5% are never seen. Policies compared, each on the bundle's own VALIDATION images only:

* ``a_centre_crop``: the current policy, the library's preset applied to the image unchanged;
* ``b_letterbox_black``: long side to 160, centred on a black 160x160 canvas;
* ``b_letterbox_mean``: the same, the canvas filled with the image's mean colour;
* ``c_squash``: the whole image resized to 160x160, ignoring the aspect ratio.

Every policy starts from the pixels the library's dataset gives a row (``ManifestDataset.pixels``: decoded,
the source's artefact removed as in training) and, for b and c, produces a 160x160 ``uint8`` image that is
then handed to the library's unchanged eval preset; the script checks, image by image, that the preset is
then a no-op apart from normalisation. Resizing mirrors the preset (albumentations, INTER_AREA when
shrinking, bilinear when enlarging). The forward pass, weights, normalisation, per-type temperatures and
referral thresholds are the bundle's (:class:`skintriage.inference.predictor.Predictor`). Each image is scored at the
calibration of its *recorded* photo type (the one ``calibration.by_acquisition`` was fitted on); the
deployed "auto" reading of the type by the bundle's acquisition classifier is reported as well, since a
black border may look like a dermoscope's vignette. Thresholds were calibrated with policy a, so AUC
(threshold-free) is the primary measure; paired stratified bootstrap intervals of the AUC difference to
policy a say whether a change is beyond noise.

Writes results.json, results.md and auc.png next to this file. Usage:

    python experiments/input_policy/run.py --data-root /work/shared/data
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from skintriage import metrics
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.dataset import ManifestDataset
from skintriage.data.records import Manifest
from skintriage.data.taxonomy import is_malignant
from skintriage.inference.predictor import Predictor
from skintriage.training.config import TrainConfig
from skintriage.training.data import training_manifest
from skintriage.triage.calibration import probabilities_at_temperature, probabilities_at_temperatures

HERE = Path(__file__).resolve().parent
TYPES = ("dermoscopic", "clinical")
NON_SQUARE_ASPECT = 1.1
BOOTSTRAP_RESAMPLES = 1000
BATCH = 64
POLICIES = ("a_centre_crop", "b_letterbox_black", "b_letterbox_mean", "c_squash")
LABELS = {
    "a_centre_crop": "a: short side + centre crop (current)",
    "b_letterbox_black": "b: letterbox, black pad",
    "b_letterbox_mean": "b: letterbox, mean-colour pad",
    "c_squash": "c: squash to square",
}
COLOURS = {
    "a_centre_crop": "#334155",
    "b_letterbox_black": "#b45309",
    "b_letterbox_mean": "#0f766e",
    "c_squash": "#7c3aed",
}


# --- the square image each alternative policy hands to the library ----------------------------------------------


def letterbox(size: int, fill: str) -> Callable[[np.ndarray], np.ndarray]:
    longest = A.LongestMaxSize(max_size=size, area_for_downscale="image")

    def apply(pixels: np.ndarray) -> np.ndarray:
        resized = longest(image=pixels)["image"]
        height, width = resized.shape[:2]
        colour = np.zeros(3) if fill == "black" else pixels.reshape(-1, 3).mean(axis=0)
        canvas = np.empty((size, size, 3), dtype=np.uint8)
        canvas[:] = np.rint(colour).astype(np.uint8)
        top, left = (size - height) // 2, (size - width) // 2  # centred, as PadIfNeeded(position="center")
        canvas[top : top + height, left : left + width] = resized
        return canvas

    return apply


def squash(size: int) -> Callable[[np.ndarray], np.ndarray]:
    resize = A.Resize(height=size, width=size, area_for_downscale="image")
    return lambda pixels: resize(image=pixels)["image"]


def normalised(square: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """What the preset must return for an input already at the model's size: normalisation only."""
    return torch.from_numpy(((square.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1).copy())


# --- metrics ------------------------------------------------------------------------------------------------------


def auc_ci(score: np.ndarray, malignant: np.ndarray) -> dict:
    m = malignant.astype(int)
    two = np.column_stack([1 - score, score])
    ci = metrics.bootstrap_ci(
        lambda a, b: metrics.referral_roc_auc(b[:, 1], a == 1), m, two, n_resamples=BOOTSTRAP_RESAMPLES
    )
    return {"auc": ci.estimate, "auc_ci95": [ci.low, ci.high]}


def rates(score: np.ndarray, malignant: np.ndarray, threshold: np.ndarray) -> dict:
    """Sensitivity / specificity with each row at its own threshold (margin >= 0), with bootstrap CIs."""
    refer = (score - threshold >= 0).astype(float)  # score >= its own threshold, exact in floating point
    m = malignant.astype(int)
    two = np.column_stack([1 - refer, refer])
    out = {}
    for index, key in ((0, "sensitivity"), (1, "specificity")):
        ci = metrics.bootstrap_ci(
            lambda a, b, i=index: metrics.sensitivity_specificity_at_threshold(b[:, 1], a == 1, 0.5)[i],
            m,
            two,
            n_resamples=BOOTSTRAP_RESAMPLES,
        )
        out[key], out[f"{key}_ci95"] = ci.estimate, [ci.low, ci.high]
    out["referred_fraction"] = float(refer.mean())
    return out


def paired_auc_difference(score: np.ndarray, reference: np.ndarray, malignant: np.ndarray, seed: int = 0) -> dict:
    """AUC(score) - AUC(reference) on the same images, with a paired bootstrap stratified by truth."""
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(malignant), np.flatnonzero(~malignant)]
    values = np.empty(BOOTSTRAP_RESAMPLES)
    for r in range(BOOTSTRAP_RESAMPLES):
        index = np.concatenate([rng.choice(rows, size=len(rows), replace=True) for rows in strata])
        values[r] = metrics.referral_roc_auc(score[index], malignant[index]) - metrics.referral_roc_auc(
            reference[index], malignant[index]
        )
    low, high = np.quantile(values, [0.025, 0.975])
    point = metrics.referral_roc_auc(score, malignant) - metrics.referral_roc_auc(reference, malignant)
    return {
        "delta_auc": float(point),
        "delta_auc_ci95": [float(low), float(high)],
        "beyond_noise": bool(low > 0 or high < 0),
    }


def block(score, malignant, threshold, reference_score=None, reference_block=None) -> dict:
    if (
        reference_block is not None and len(score) and np.array_equal(score, reference_score)
    ):  # identical inputs, e.g. all square
        return {**reference_block, "delta_auc": 0.0, "delta_auc_ci95": [0.0, 0.0], "beyond_noise": False}
    out = {"n_images": len(score), "n_malignant": int(malignant.sum()), "n_benign": int((~malignant).sum())}
    if malignant.any() and (~malignant).any():
        out.update(auc_ci(score, malignant))
        out.update(rates(score, malignant, threshold))
        if reference_score is not None:
            out.update(paired_auc_difference(score, reference_score, malignant))
    return out


# --- the run ------------------------------------------------------------------------------------------------------


def predict_policies(predictor: Predictor, dataset: ManifestDataset, transforms: dict, mean, std):
    """Logits and embeddings of every row under every policy.

    An alternative policy's input tensor that is bit-identical to policy a's (a square photo) reuses a's
    outputs instead of a second forward pass; ``identical`` counts those rows per policy.
    """
    preset = predictor.preset
    size = preset.input_size
    n = len(dataset)
    heights, widths = np.zeros(n, int), np.zeros(n, int)
    logits = {p: np.zeros((n, len(predictor.classes)), np.float32) for p in POLICIES}
    embeddings: dict[str, np.ndarray] = {}
    identical = dict.fromkeys(POLICIES, 0)
    max_noop_error = 0.0
    progress = tqdm(total=n * len(POLICIES), desc="validation images x policies", unit="img")
    for start in range(0, n, BATCH):
        rows = np.arange(start, min(n, start + BATCH))
        pixels = [dataset.pixels(int(row)) for row in rows]  # decoded, artefact removed: what the preset receives
        for row, p in zip(rows, pixels, strict=True):
            heights[row], widths[row] = p.shape[:2]
        reference = torch.stack([preset(p) for p in pixels])  # policy a: the library's preset as it is
        for policy in POLICIES:
            if policy == "a_centre_crop":
                batch = reference
                todo = np.ones(len(rows), dtype=bool)
            else:
                squares = [transforms[policy](p) for p in pixels]
                batch = torch.stack([preset(q) for q in squares])  # the library's own eval preset, unchanged
                for q, tensor in zip(squares, batch, strict=True):
                    assert q.shape == (size, size, 3) and tuple(tensor.shape) == (3, size, size)
                    max_noop_error = max(max_noop_error, float((tensor - normalised(q, mean, std)).abs().max()))
                todo = ~np.array([torch.equal(x, y) for x, y in zip(batch, reference, strict=True)])
                identical[policy] += int((~todo).sum())
                logits[policy][rows[~todo]] = logits["a_centre_crop"][rows[~todo]]
                embeddings[policy][rows[~todo]] = embeddings["a_centre_crop"][rows[~todo]]
            if todo.any():
                out_logits, out_embedding = predictor.forward(batch[torch.from_numpy(todo)].to(predictor.device))
                if not embeddings:  # policy a runs first, on every row: its width sizes them all
                    embeddings.update({q: np.zeros((n, out_embedding.shape[1]), np.float32) for q in POLICIES})
                logits[policy][rows[todo]] = out_logits.float().cpu().numpy()
                embeddings[policy][rows[todo]] = out_embedding.float().cpu().numpy()
            progress.update(len(rows))
    progress.close()
    return heights, widths, logits, embeddings, max_noop_error, identical


def validation_rows(predictor: Predictor, data_root: Path) -> tuple[ManifestDataset, object]:
    """The bundle's validation split, rebuilt with the library (as ``train.finish`` selects it)."""
    metadata = predictor.bundle.metadata
    config = TrainConfig.model_validate(metadata["training"]["config"])
    manifest = training_manifest(config, data_root=data_root, progress=True).manifest
    frame = manifest.frame
    val = frame[(frame.split == "val") & frame.diagnosis.isin(predictor.classes)].reset_index(drop=True)
    dataset = ManifestDataset(
        Manifest(val, manifest.root),
        transform=None,
        class_names=predictor.classes,
        mask_watermark_sources=metadata["preprocessing"].get("mask_watermark_sources", []),
    )
    return dataset, val


def run(data_root: Path, checkpoint: Path, cache: Path | None = None) -> dict:
    started = time.perf_counter()
    predictor = Predictor.load(checkpoint, variant="torch-float32")
    preset = predictor.preset
    size = preset.input_size
    preprocessing = predictor.bundle.metadata["preprocessing"]
    norm = preprocessing["normalization"]
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    transforms = {
        "b_letterbox_black": letterbox(size, "black"),
        "b_letterbox_mean": letterbox(size, "mean"),
        "c_squash": squash(size),
    }

    dataset, val = validation_rows(predictor, data_root)
    kinds = val["acquisition"].astype(str).to_numpy()
    malignant = val["triage_group"].map(is_malignant).to_numpy(dtype=bool)
    assert set(kinds) <= set(TYPES), set(kinds)
    assert (val["score_weight"].astype(float) == 1).all()

    manifest_seconds = time.perf_counter() - started
    n = len(dataset)
    cached = None
    if cache is not None and cache.exists():
        cached = np.load(cache)
        if list(cached["image_id"]) != val["image_id"].astype(str).tolist():
            cached = None
    if cached is not None:  # predictions of an earlier run on the same rows (development only)
        heights, widths = cached["heights"], cached["widths"]
        logits = {p: cached[f"logits_{p}"] for p in POLICIES}
        embeddings = {p: cached[f"embeddings_{p}"] for p in POLICIES}
        max_noop_error, identical = (
            float(cached["max_noop_error"]),
            {p: int(cached[f"identical_{p}"]) for p in POLICIES},
        )
    else:
        heights, widths, logits, embeddings, max_noop_error, identical = predict_policies(
            predictor, dataset, transforms, mean, std
        )
        if cache is not None:
            np.savez(
                cache,
                image_id=val["image_id"].astype(str).to_numpy().astype("U"),
                heights=heights,
                widths=widths,
                max_noop_error=max_noop_error,
                **{f"logits_{p}": logits[p] for p in POLICIES},
                **{f"embeddings_{p}": embeddings[p] for p in POLICIES},
                **{f"identical_{p}": identical[p] for p in POLICIES},
            )
    if max_noop_error > 1e-5:
        raise AssertionError(f"the library's preset changed a square input beyond normalisation: {max_noop_error}")
    predict_seconds = time.perf_counter() - started - manifest_seconds

    aspect = np.maximum(heights, widths) / np.minimum(heights, widths)
    non_square = aspect > NON_SQUARE_ASPECT
    calibrations = predictor.calibrations
    temperature = np.array([calibrations[k].temperature for k in kinds])
    threshold = np.array([calibrations[k].referral_threshold for k in kinds])

    scores, auto = {}, {}
    for policy in POLICIES:
        z = logits[policy]
        e = embeddings[policy]
        scores[policy] = metrics.malignancy_score(
            probabilities_at_temperatures(z, list(temperature)), predictor.classes
        )
        used = predictor.acquisitions(e, "auto")  # the deployed path: the classifier's reading of the type
        read = np.array([u.calibration for u in used])
        t_auto = np.array([u.temperature for u in used])
        th_auto = np.array([predictor.policies[u.calibration].referral_threshold for u in used])
        p_auto = probabilities_at_temperatures(z, list(t_auto))
        auto[policy] = {
            "read": read,
            "score": metrics.malignancy_score(p_auto, predictor.classes),
            "threshold": th_auto,
        }

    results: dict = {"by_type": {}}
    for kind in TYPES:
        rows = kinds == kind
        crop_lost = 1.0 - np.minimum(heights, widths)[rows] / np.maximum(heights, widths)[rows]
        entry = {
            "n_images": int(rows.sum()),
            "n_non_square": int((rows & non_square).sum()),
            "non_square_share": float(non_square[rows].mean()),
            "aspect_median": float(np.median(aspect[rows])),
            "aspect_max": float(aspect[rows].max()),
            "centre_crop_area_discarded_mean": float(crop_lost.mean()),
            "centre_crop_area_discarded_mean_non_square": float(crop_lost[non_square[rows]].mean())
            if (rows & non_square).any()
            else 0.0,
            "referral_threshold": float(calibrations[kind].referral_threshold),
            "temperature": float(calibrations[kind].temperature),
            "policies": {},
        }
        for policy in POLICIES:
            per = {}
            for subset, mask in (("all", rows), ("non_square", rows & non_square)):
                per[subset] = block(
                    scores[policy][mask],
                    malignant[mask],
                    threshold[mask],
                    None if policy == "a_centre_crop" else scores["a_centre_crop"][mask],
                    None if policy == "a_centre_crop" else entry["policies"]["a_centre_crop"][subset],
                )
            a = auto[policy]
            per["auto"] = {
                "acquisition_read_correctly": float(np.mean(a["read"][rows] == kind)),
                **rates(a["score"][rows], malignant[rows], a["threshold"][rows]),
            }
            entry["policies"][policy] = per
        results["by_type"][kind] = entry

    # the bundle's own validation numbers, to show policy a reproduces them (pooled temperature and threshold)
    p_a = probabilities_at_temperature(logits["a_centre_crop"], predictor.pooled_calibration.temperature)
    pooled = metrics.malignancy_score(p_a, predictor.classes)
    recorded = predictor.bundle.metadata["metrics"]["validation"]["referral"]
    by_acq = predictor.bundle.metadata["calibration"]["by_acquisition"]
    results["reproduction"] = {
        "n_images": n,
        "pooled_referral_auc": metrics.referral_roc_auc(pooled, malignant),
        "pooled_referral_auc_in_model_json": recorded["auc"],
        "per_type_sensitivity": {
            k: metrics.sensitivity_specificity_at_threshold(
                scores["a_centre_crop"][kinds == k], malignant[kinds == k], calibrations[k].referral_threshold
            )[0]
            for k in TYPES
        },
        "per_type_sensitivity_in_model_json": {k: by_acq[k]["validation"]["referral_sensitivity"] for k in TYPES},
        "preset_noop_max_abs_error": max_noop_error,
        "rows_with_input_identical_to_policy_a": identical,
    }
    results["sources_non_square"] = {
        str(source): {
            "n": int((val.source == source).sum()),
            "non_square": int(non_square[(val.source == source).to_numpy()].sum()),
        }
        for source in sorted(val.source.unique())
    }
    results["preprocessing"] = preprocessing
    results["policies"] = LABELS
    results["runtime_seconds"] = {
        "manifest": manifest_seconds,
        "predict": predict_seconds,
        "total": time.perf_counter() - started,
    }
    results["machine"] = {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    results["command"] = "python experiments/input_policy/run.py --data-root /work/shared/data"
    return results


# --- outputs ------------------------------------------------------------------------------------------------------


def fmt(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def plot(results: dict, path: Path) -> None:
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    axes = figure.subplots(1, 3, width_ratios=[1, 1, 0.9])
    axes[1].sharey(axes[0])
    subsets = (("all", "all validation images"), ("non_square", f"non-square subset (aspect > {NON_SQUARE_ASPECT})"))
    for axis, (subset, title) in zip(axes[:2], subsets, strict=True):
        for t, kind in enumerate(TYPES):
            entry = results["by_type"][kind]
            for i, policy in enumerate(POLICIES):
                b = entry["policies"][policy][subset]
                if "auc" not in b:
                    continue
                axis.errorbar(
                    t + (i - (len(POLICIES) - 1) / 2) * 0.17,
                    b["auc"],
                    yerr=[[b["auc"] - b["auc_ci95"][0]], [b["auc_ci95"][1] - b["auc"]]],
                    fmt="o",
                    color=COLOURS[policy],
                    capsize=4,
                    label=LABELS[policy] if t == 1 else None,
                )
            if subset == "non_square" and entry["n_non_square"] == 0:
                axis.text(t, 0.86, "no non-square\nimages", ha="center", va="center", fontsize=9, color="#475569")
        counts = [results["by_type"][k]["n_images" if subset == "all" else "n_non_square"] for k in TYPES]
        axis.set_xticks(range(len(TYPES)), [f"{k}\n(n={c})" for k, c in zip(TYPES, counts, strict=True)])
        axis.set_xlim(-0.6, len(TYPES) - 0.4)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("malignancy (referral) ROC AUC, 95% bootstrap CI")
    # the decision-relevant view: paired differences to the current policy on clinical validation images
    axis = axes[2]
    for j, subset in enumerate(("all", "non_square")):
        for i, policy in enumerate(POLICIES[1:]):
            b = results["by_type"]["clinical"]["policies"][policy][subset]
            low, high = b["delta_auc_ci95"]
            axis.errorbar(
                j + (i - 1) * 0.2,
                b["delta_auc"],
                yerr=[[b["delta_auc"] - low], [high - b["delta_auc"]]],
                fmt="o",
                color=COLOURS[policy],
                capsize=4,
            )
    axis.axhline(0.0, color=COLOURS["a_centre_crop"], linewidth=1, linestyle="--")
    clinical = results["by_type"]["clinical"]
    axis.set_xticks(
        [0, 1], [f"all clinical\n(n={clinical['n_images']})", f"non-square\n(n={clinical['n_non_square']})"]
    )
    axis.set_xlim(-0.6, 1.6)
    axis.set_title("clinical: ΔAUC vs a (paired)")
    axis.set_ylabel("AUC(policy) − AUC(a), 95% CI")
    axis.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=9)
    figure.suptitle("Input policy for non-square photos: bundled model, validation split only (no test set used)")
    figure.savefig(path, dpi=130)


def write_markdown(results: dict, path: Path) -> None:
    r = results["reproduction"]
    runtime = results["runtime_seconds"]
    lines = [
        "# Input policy for non-square photos (issue 14)",
        "",
        "Does the bundle's centre crop hide lesions near the edge of wide clinical photos, and would letterboxing "
        "or squashing do better? Measured on the bundled model's (`src/skintriage/model/default`) **validation split only**; "
        "no test set was used. One command (the library rebuilds the split from `model.json`'s training config):",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Runtime: {runtime['total']:.0f} s on a 2-core CPU, {results['machine']['torch_threads']} torch threads "
        f"(manifest and split {runtime['manifest']:.0f} s, decoding and forward passes {runtime['predict']:.0f} s, "
        f"bootstrap metrics the rest).",
        "",
        "## What the bundle does now (policy a)",
        "",
        f"`model.json` `preprocessing`: `input_size` {results['preprocessing']['input_size']}, `crop_fraction` "
        f'{results["preprocessing"]["crop_fraction"]}, resize "{results["preprocessing"]["resize"]}". Both the demo '
        "(`Predictor.predict` -> `Predictor.input_tensor`) and evaluation (`inference.bundle_dataset` -> "
        "`ManifestDataset.pixels`) run `data.dataset.prepare_pixels` (the source's artefact removed; none in the "
        "demo) and then `inference.eval_preset` = `data.presets.ClassificationPresetEval`: `SmallestMaxSize(160)` "
        "(INTER_AREA when shrinking) and `CenterCrop(160, 160)`. So the short side is kept whole and the long side "
        "is cut symmetrically: a 4:3 landscape photo loses 12.5% of its width on each side, a 3:2 one 16.7%.",
        "",
        "| photo type | validation images | non-square (aspect > 1.1) | median aspect | image area the centre crop discards (mean over non-square) |",
        "|---|---|---|---|---|",
    ]
    for kind in TYPES:
        e = results["by_type"][kind]
        lines.append(
            f"| {kind} | {e['n_images']} | {e['n_non_square']} ({e['non_square_share']:.0%}) | {e['aspect_median']:.2f} "
            f"| {e['centre_crop_area_discarded_mean_non_square']:.0%} |"
        )
    by_source = ", ".join(f"{k} {v['non_square']}/{v['n']}" for k, v in results["sources_non_square"].items())
    lines += [
        "",
        f"Non-square images per source: {by_source}.",
        "",
        "Checks: policy a reproduces the bundle's recorded validation numbers exactly (pooled referral AUC "
        f"{r['pooled_referral_auc']:.4f}, model.json {r['pooled_referral_auc_in_model_json']:.4f}; per-type "
        "sensitivity "
        + ", ".join(
            f"{k} {r['per_type_sensitivity'][k]:.4f} (model.json {r['per_type_sensitivity_in_model_json'][k]:.4f})"
            for k in TYPES
        )
        + "). For b and c the script makes the 160x160 image and the library's own preset consumes it; the preset is "
        f"then a no-op beyond normalisation (max abs difference {r['preset_noop_max_abs_error']:.1e} over every "
        "image). Where a policy's input tensor is bit-identical to policy a's (square images: "
        f"{r['rows_with_input_identical_to_policy_a']['c_squash']} of {r['n_images']}), a's outputs are reused.",
        "",
        "## Results",
        "",
        "Malignancy (referral) ROC AUC with a 95% stratified bootstrap CI (1,000 resamples, the library's "
        "`metrics.bootstrap_ci`); ΔAUC vs policy a with a paired stratified bootstrap CI (same resampled images "
        "for both policies); sensitivity / specificity at the bundle's per-type referral threshold. Every image is "
        "scored at its recorded photo type's temperature and threshold (`calibration.by_acquisition`, thresholds "
        "dermoscopic "
        f"{results['by_type']['dermoscopic']['referral_threshold']:.4f}, clinical "
        f"{results['by_type']['clinical']['referral_threshold']:.4f}). The thresholds were calibrated with policy a, "
        "so sensitivity / specificity of b and c are off their operating point; AUC is the fair, threshold-free "
        "comparison.",
        "",
    ]
    for subset, title in (("all", "All validation images"), ("non_square", "Non-square subset (aspect > 1.1)")):
        lines += [
            f"### {title}",
            "",
            "| type | policy | n (malignant) | AUC [95% CI] | ΔAUC vs a [paired 95% CI] | sensitivity [95% CI] | specificity [95% CI] |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind in TYPES:
            if subset == "non_square" and results["by_type"][kind]["n_non_square"] == 0:
                lines.append(f"| {kind} | (all) | 0 | no non-square {kind} validation image | | | |")
                continue
            for policy in POLICIES:
                b = results["by_type"][kind]["policies"][policy][subset]
                delta = (
                    "—"
                    if policy == "a_centre_crop"
                    else f"{b['delta_auc']:+.3f} [{b['delta_auc_ci95'][0]:+.3f}, {b['delta_auc_ci95'][1]:+.3f}]"
                )
                lines.append(
                    f"| {kind} | {LABELS[policy]} | {b['n_images']} ({b['n_malignant']}) | {fmt(b['auc'], b['auc_ci95'])} "
                    f"| {delta} | {fmt(b['sensitivity'], b['sensitivity_ci95'])} | {fmt(b['specificity'], b['specificity_ci95'])} |"
                )
        lines.append("")
    lines += [
        '### Deployed path (photo type read by the bundle\'s acquisition classifier, as `acquisition="auto"`)',
        "",
        "| type | policy | type read correctly | sensitivity | specificity |",
        "|---|---|---|---|---|",
    ]
    for kind in TYPES:
        for policy in POLICIES:
            a = results["by_type"][kind]["policies"][policy]["auto"]
            lines.append(
                f"| {kind} | {LABELS[policy]} | {a['acquisition_read_correctly']:.1%} | {a['sensitivity']:.3f} | {a['specificity']:.3f} |"
            )
    lines += [
        "",
        "![AUC per policy and photo type; right: paired ΔAUC vs the current policy on clinical images](auc.png)",
        "",
        "## Reading",
        "",
        "* Dermoscopic validation images are all square, so the question is only about clinical photos, and 93% "
        "of those are non-square.",
        "* The model was trained on short-side-resized images with `RandomResizedCrop` (area 0.35-1, aspect "
        "3/4-4/3, then stretched to a square): it has seen crops and mild aspect distortion, never padding. "
        "That fits the numbers: squashing a 4:3 photo (a distortion inside the training range) is level with the "
        "centre crop, while both letterbox variants, whose pad bands are new to the model, score lower (not beyond "
        "noise) and move the malignancy scores (black pad: sensitivity up, specificity down at the old threshold).",
        "* The clinical validation photos are atlas pictures (DermNet, Fitzpatrick17k, SD-198, MED-NODE) taken to "
        "show a lesion, which usually puts it near the centre (an expectation, not measured here: the sets have no "
        "lesion positions), so this set can hardly show the failure issue 14 describes, a lesion near the edge of a "
        "wide photo. A no-difference result here does not show that such lesions are handled; it shows that "
        "changing the policy would not improve, and could slightly hurt, photos like these.",
        "* Three alternatives were compared without a multiplicity correction; none reaches significance even so.",
        "",
        "## Recommendation",
        "",
        results["recommendation"],
        "",
        "## If a policy other than a were adopted",
        "",
        "* `skintriage.data.presets.ClassificationPresetEval.__init__`: replace `SmallestMaxSize` + `CenterCrop` "
        '(e.g. by `A.Resize(input_size, input_size, area_for_downscale="image")` for squash, or `LongestMaxSize` + '
        "`PadIfNeeded` for letterbox); used by the demo, `evaluate`, and validation during training "
        "(`train.py` builds one directly).",
        "* `skintriage.inference.batch.eval_preset`: read the policy from a new `model.json` `preprocessing` key so "
        "that existing bundles keep the centre crop; `train.finish` writes that `preprocessing` dict.",
        "* `skintriage.inference.explain.crop_box` / `heatmap_on_image` / `overlay` and `Predictor.overlay`: they replicate the "
        "centre-crop geometry to map the Grad-CAM heatmap back onto the photo.",
        "* Re-calibration, since temperatures, thresholds and embeddings change: `calibration.calibrate` / "
        "`calibrate_by_acquisition` in `train.finish`, and `gates.fit_referral_gates` (uncertainty gate and "
        "acquisition classifier; `gates.refit_referral_gates` for an existing bundle).",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def recommendation(results: dict) -> str:
    clinical = results["by_type"]["clinical"]["policies"]
    better = [p for p in POLICIES[1:] if clinical[p]["all"]["beyond_noise"] and clinical[p]["all"]["delta_auc"] > 0]
    worse = [p for p in POLICIES[1:] if clinical[p]["all"]["beyond_noise"] and clinical[p]["all"]["delta_auc"] < 0]
    deltas = ", ".join(
        f"{p} {clinical[p]['all']['delta_auc']:+.3f} [{clinical[p]['all']['delta_auc_ci95'][0]:+.3f}, "
        f"{clinical[p]['all']['delta_auc_ci95'][1]:+.3f}]"
        for p in POLICIES[1:]
    )
    if better:
        best = max(better, key=lambda p: clinical[p]["all"]["delta_auc"])
        return (
            f"Adopt **{LABELS[best]}**: on clinical validation its AUC is higher than the current policy's beyond "
            f"noise (paired ΔAUC {deltas}). The per-type referral thresholds and temperatures were fitted with "
            "policy a and must be re-calibrated on validation with the new policy before it ships."
        )
    note = f" ({', '.join(LABELS[p] for p in worse)}: worse beyond noise.)" if worse else ""
    dermoscopic = (
        " Every dermoscopic validation image is square (HAM10000 is staged at 224x224), so the policies give "
        "identical dermoscopic results."
        if results["by_type"]["dermoscopic"]["n_non_square"] == 0
        else ""
    )
    return (
        "**Keep the current policy (a: short side to 160, centre crop).** No alternative improves clinical "
        f"validation AUC beyond noise (paired ΔAUC vs a, 95% CI: {deltas}).{note}{dermoscopic} A change would also "
        "force re-calibrating every per-type threshold and temperature and refitting the gates, for no measured "
        "gain. The edge-of-photo concern stays real for a user's off-centre lesion, which this validation set "
        "(atlas photos, mostly lesion-centred) hardly contains; the cheap mitigation is in the demo, not the model: ask users to "
        "centre the lesion, since the Grad-CAM overlay covers only the square the model saw.\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--cache", type=Path, default=None, help="reuse/save predictions here (development only)")
    args = parser.parse_args(argv)
    results = run(args.data_root, args.checkpoint, args.cache)
    results["recommendation"] = recommendation(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    plot(results, args.out / "auc.png")
    write_markdown(results, args.out / "results.md")
    print(results["recommendation"])
    print(f"wrote {args.out / 'results.md'} ({results['runtime_seconds']['total']:.0f} s)")


if __name__ == "__main__":
    main()
