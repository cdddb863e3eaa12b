"""Human-readable reports: ``report.md`` with plots for an evaluation, and ``MODEL_CARD.md`` for a bundle.

``metrics.json`` is complete but unreadable at a glance; a reviewer deciding whether the referral
threshold is safe needs the ROC curve with the operating point on it, the reliability diagram and the
confusion matrix next to the numbers, and the disclaimer before any of them. Everything here is
computed from an :class:`~skintriage.evaluation.result.EvaluationResult` (or a bundle's ``model.json``) with
the same conventions as ``evaluate.py``, so a plot never disagrees with the number printed beside it:

* multiclass plots (per-class ROC, reliability, confusion) use the probabilities restricted to the
  label space and renormalised, on rows with ``score_weight > 0``;
* the referral ROC uses the full model output (the malignancy score) and the validation threshold.

Plotting uses matplotlib's non-interactive ``Agg`` backend, so reports can be written on a headless
training machine; every figure is closed after saving, so evaluating many sets does not leak memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # only after matplotlib.use: the backend is fixed on import
import numpy as np
import pandas as pd
import sklearn.metrics
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from skintriage import DISCLAIMER, metrics
from skintriage.common.atomic import atomic_path, atomic_write_text
from skintriage.data.sources import SOURCES
from skintriage.data.taxonomy import DIAGNOSES, is_malignant
from skintriage.evaluation.result import BOOTSTRAP_RESAMPLES, EvaluationResult
from skintriage.model.registry import MODELS

REPORT_FILE = "report.md"
MODEL_CARD_FILE = "MODEL_CARD.md"
ROC_FILE = "roc.png"
REFERRAL_ROC_FILE = "referral_roc.png"
RELIABILITY_FILE = "reliability.png"
CONFUSION_FILE = "confusion.png"
DPI = 120
NOT_IN_TRAINING = {"mcc": "Merkel cell carcinoma", "metastasis": "cutaneous metastasis"}


# --- formatting -------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """Three decimals for rates, whole numbers as integers, and "n/a" for anything undefined.

    metrics.json holds NaN (undefined rates) and null (NaN after a round trip through pandas' JSON);
    both mean "undefined" and must not print as a misleading 0 or crash the report.
    """
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return str(value)


def fmt_count(value: Any) -> str:
    """Counts are weighted sums (floats); print them as integers when they are whole."""
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return fmt(value)


def fmt_ci(*, ci95: Mapping[str, Sequence[float]] | None, key: str) -> str:
    """``[low, high]`` when the bootstrap produced an interval for ``key``, else empty (not "n/a": none was asked)."""
    interval = (ci95 or {}).get(key)
    if not interval or len(interval) != 2:
        return ""
    return f"[{fmt(interval[0])}, {fmt(interval[1])}]"


def markdown_table(*, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; cells are already formatted strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the data the plots share ----------------------------------------------------------------------


def save_figure(*, figure: Figure, path: Path) -> Path:
    """Save and close at once: pyplot keeps every open figure alive, and a run evaluates several sets."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png")
    plt.close(figure)
    return path


def note_undefined(*, axes: Axes, message: str) -> None:
    """Say on the plot why it is empty, so that a missing curve is not read as a rendering bug."""
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=axes.transAxes)


def roc_axes(*, axes: Axes, title: str) -> None:
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title=title,
        aspect="equal",
    )


def roc_curve(*, truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(FPR, TPR, AUC) on rows of positive weight; the caller checks that both classes are present."""
    keep = weights > 0
    fpr, tpr, _ = sklearn.metrics.roc_curve(truth[keep], score[keep], sample_weight=weights[keep])
    return fpr, tpr, float(sklearn.metrics.roc_auc_score(truth[keep], score[keep], sample_weight=weights[keep]))


def has_both(*, truth: np.ndarray, weights: np.ndarray) -> bool:
    """A ROC curve needs positives and negatives among the scored rows."""
    return bool(weights[truth].sum() > 0 and weights[~truth].sum() > 0)


# --- plots ------------------------------------------------------------------------------------------


def plot_class_roc(*, result: EvaluationResult, path: Path) -> Path:
    """One-vs-rest ROC per label-space class: where the classifier confuses a class, not just how often."""
    labels, probabilities, weights = result.space_view()
    figure, axes = plt.subplots(figsize=(6.5, 6))
    roc_axes(axes=axes, title=f"{result.name}: one-vs-rest ROC per class")
    drawn = 0
    for i, name in enumerate(result.label_space_names):
        truth = labels == i
        if has_both(truth=truth, weights=weights):
            fpr, tpr, auc = roc_curve(truth=truth, score=probabilities[:, i], weights=weights)
            axes.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
            drawn += 1
    if not drawn:
        note_undefined(axes=axes, message="no class has both positive and negative scored images")
    axes.legend(loc="lower right", fontsize="small")
    return save_figure(figure=figure, path=path)


def acquisition_groups(result: EvaluationResult) -> dict[str, np.ndarray]:
    """Row masks per acquisition type, only when there is more than one (otherwise the overall curve says it all)."""
    groups = result.frame["acquisition"].fillna("unknown").astype(str)
    if groups.nunique() < 2:
        return {}
    return {group: (groups == group).to_numpy() for group in sorted(groups.unique())}


def plot_referral_roc(*, result: EvaluationResult, path: Path) -> Path:
    """Malignant-vs-benign ROC of the malignancy score with the validation operating point marked.

    The point shows what the deployed threshold achieves on this set; the per-acquisition curves show
    whether dermoscopic and clinical photographs are ranked equally well (they usually are not).
    """
    score, malignant, weights = result.referral_view()
    figure, axes = plt.subplots(figsize=(6.5, 6))
    roc_axes(axes=axes, title=f"{result.name}: referral (malignant vs benign)")
    if not has_both(truth=malignant, weights=weights):
        note_undefined(axes=axes, message="undefined: needs malignant and benign scored images")
        return save_figure(figure=figure, path=path)
    fpr, tpr, auc = roc_curve(truth=malignant, score=score, weights=weights)
    axes.plot(fpr, tpr, color="black", linewidth=2, label=f"all images (AUC {auc:.3f})")
    for group, mask in acquisition_groups(result).items():
        group_weights = np.where(mask, weights, 0.0)
        if has_both(truth=malignant, weights=group_weights):
            g_fpr, g_tpr, g_auc = roc_curve(truth=malignant, score=score, weights=group_weights)
            axes.plot(g_fpr, g_tpr, linewidth=1.2, linestyle="--", label=f"{group} (AUC {g_auc:.3f})")
    mark_operating_point(axes=axes, result=result, score=score, malignant=malignant, weights=weights)
    axes.legend(loc="lower right", fontsize="small")
    return save_figure(figure=figure, path=path)


def mark_operating_point(
    *, axes: Axes, result: EvaluationResult, score: np.ndarray, malignant: np.ndarray, weights: np.ndarray
) -> None:
    """Mark (1 - specificity, sensitivity) at the validation threshold, if the bundle has one."""
    threshold = result.referral_threshold
    if threshold is None:
        return
    sensitivity, specificity = metrics.sensitivity_specificity_at_threshold(score, malignant, threshold, weights)
    axes.plot(
        [1 - specificity],
        [sensitivity],
        marker="o",
        markersize=9,
        color="red",
        linestyle="none",
        label=f"threshold {threshold:.3f}: sens {sensitivity:.3f}, spec {specificity:.3f}",
    )


def reliability_bins(
    *, labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray, n_bins: int
) -> pd.DataFrame:
    """Per confidence bin: weight, mean confidence and accuracy, binned exactly as ``metrics.expected_calibration_error``."""
    keep = weights > 0
    confidence = probabilities[keep].max(axis=1)
    correct = (metrics.predicted_classes(probabilities[keep]) == labels[keep]).astype(float)
    w = weights[keep]
    bins, edges = metrics.confidence_bins(confidence, n_bins)
    rows = []
    for b in range(n_bins):
        in_bin = bins == b
        total = w[in_bin].sum()
        rows.append(
            {
                "low": edges[b],
                "high": edges[b + 1],
                "weight": total,
                "confidence": np.sum(w[in_bin] * confidence[in_bin]) / total if total > 0 else np.nan,
                "accuracy": np.sum(w[in_bin] * correct[in_bin]) / total if total > 0 else np.nan,
            }
        )
    return pd.DataFrame(rows)


def plot_reliability(*, result: EvaluationResult, path: Path) -> Path:
    """Reliability diagram: is a 90%-confident prediction right 90% of the time? Counts beneath show which bins matter."""
    labels, probabilities, weights = result.space_view()
    table = reliability_bins(labels=labels, probabilities=probabilities, weights=weights, n_bins=metrics.ECE_BINS)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / metrics.ECE_BINS
    centres = (table["low"] + table["high"]) / 2
    top.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    top.bar(centres, table["accuracy"].fillna(0), width=width * 0.9, edgecolor="black", alpha=0.7, label="accuracy")
    top.plot(
        table["confidence"],
        table["accuracy"],
        marker="o",
        color="red",
        linestyle="none",
        label="mean confidence vs accuracy",
    )
    top.set(
        ylim=(0, 1.03), ylabel="accuracy", title=f"{result.name}: reliability (ECE {fmt(result.metrics.get('ece'))})"
    )
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centres, table["weight"], width=width * 0.9, color="grey", edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="top-label confidence (label space, renormalised)", ylabel="images")
    return save_figure(figure=figure, path=path)


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its support (the class's recall profile); a class with no images stays 0."""
    support = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, support, out=np.zeros_like(matrix, dtype=float), where=support > 0)


def plot_confusion(*, result: EvaluationResult, path: Path) -> Path:
    """Confusion matrix of the class call, coloured by row share so rare classes read as well as naevi."""
    labels, _, weights = result.space_view()
    decisions = result.decision_view()
    keep = weights > 0
    matrix = metrics.confusion_matrix(labels[keep], decisions[keep], weights[keep])
    shares = row_normalised(matrix)
    names = result.label_space_names
    size = max(4.5, 0.6 * len(names) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class (row)")
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if shares[row, column] > 0.5 else "black"
        axes.text(column, row, fmt_count(count), ha="center", va="center", color=colour, fontsize="small")
    axes.set(
        xticks=range(len(names)),
        yticks=range(len(names)),
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted",
        ylabel="true",
        title=f"{result.name}: confusion matrix",
    )
    plt.setp(axes.get_xticklabels(), rotation=45, ha="right")
    return save_figure(figure=figure, path=path)


# --- report.md --------------------------------------------------------------------------------------


def headline_rows(m: Mapping[str, Any]) -> list[list[str]]:
    """(metric, value, 95% CI) rows: the numbers a reader looks at first, multiclass then referral."""
    ci = m.get("ci95")
    referral = m.get("referral", {})
    return [
        ["images scored", fmt(m.get("n_images")), ""],
        ["images excluded (diagnosis the model has no output for)", fmt(m.get("n_excluded")), ""],
        ["accuracy", fmt(m.get("accuracy")), fmt_ci(ci95=ci, key="accuracy")],
        ["balanced accuracy", fmt(m.get("balanced_accuracy")), fmt_ci(ci95=ci, key="balanced_accuracy")],
        ["macro AUC", fmt(m.get("macro_auc")), fmt_ci(ci95=ci, key="macro_auc")],
        [f"ECE ({metrics.ECE_BINS} bins)", fmt(m.get("ece")), fmt_ci(ci95=ci, key="ece")],
        ["Brier score", fmt(m.get("brier")), fmt_ci(ci95=ci, key="brier")],
        ["malignant / benign images", f"{fmt(referral.get('n_malignant'))} / {fmt(referral.get('n_benign'))}", ""],
        ["referral threshold (from validation)", fmt(referral.get("threshold")), ""],
        ["referral sensitivity", fmt(referral.get("sensitivity")), fmt_ci(ci95=ci, key="referral_sensitivity")],
        ["referral specificity", fmt(referral.get("specificity")), fmt_ci(ci95=ci, key="referral_specificity")],
        ["share of images referred", fmt(referral.get("referred_fraction")), ""],
        ["referral AUC", fmt(referral.get("auc")), fmt_ci(ci95=ci, key="referral_auc")],
        ["sensitivity at specificity 0.70", fmt(referral.get("sensitivity_at_specificity_0.70")), ""],
        ["specificity at sensitivity 0.95", fmt(referral.get("specificity_at_sensitivity_0.95")), ""],
    ]


PER_CLASS_COLUMNS = {
    "support": "support",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "auc": "AUC",
    "auc_sens_80": "AUC above 80% sens.",
    "ap": "AP",
}


def per_class_table(per_class: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [
        [name] + [(fmt_count if key == "support" else fmt)(values.get(key)) for key in PER_CLASS_COLUMNS]
        for name, values in per_class.items()
    ]
    return markdown_table(header=["class", *PER_CLASS_COLUMNS.values()], rows=rows)


def group_table(*, title: str, groups: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per acquisition type or source: where a pooled number hides a weak subgroup."""
    header = [
        title,
        "images",
        "accuracy",
        "balanced acc.",
        "macro AUC",
        "ECE",
        "Brier",
        "referral sens.",
        "referral spec.",
        "referral AUC",
    ]
    rows = []
    for group, m in groups.items():
        referral = m.get("referral", {})
        rows.append(
            [group, fmt(m.get("n_images"))]
            + [fmt(m.get(k)) for k in ("accuracy", "balanced_accuracy", "macro_auc", "ece", "brier")]
            + [fmt(referral.get(k)) for k in ("sensitivity", "specificity", "auc")]
        )
    return markdown_table(header=header, rows=rows)


def acquisition_sections(m: Mapping[str, Any]) -> list[str]:
    """The acquisition classifier's accuracy and the per-acquisition referral, when the bundle has them."""
    sections = []
    accuracy = m.get("acquisition_accuracy")
    if accuracy:
        rows = [["all recorded", fmt(accuracy.get("n_images")), fmt(accuracy.get("accuracy"))]]
        rows += [
            [kind, fmt(values.get("n_images")), fmt(values.get("accuracy"))]
            for kind, values in (accuracy.get("by_acquisition") or {}).items()
        ]
        sections.append(
            "## Acquisition classifier\n\nHow often the model's dermoscopic-or-clinical reading (which selects the "
            "temperature and thresholds when the user does not say) matches the recorded acquisition type; "
            f"{fmt(accuracy.get('n_not_recorded'))} images without a recorded type are not scored.\n\n"
            + markdown_table(header=["acquisition", "images", "accuracy"], rows=rows)
        )
    deployed = m.get("referral_per_acquisition")
    if deployed:
        groups = {"all images": deployed.get("all") or {}, **(deployed.get("by_acquisition") or {})}
        keys = ("sensitivity", "specificity", "referred_fraction", "urgent_fraction")
        rows = [
            [group, f"{fmt(b.get('n_malignant'))} / {fmt(b.get('n_benign'))}", *(fmt(b.get(k)) for k in keys)]
            for group, b in groups.items()
        ]
        sections.append(
            "## Referral with per-acquisition thresholds\n\nAs the predictor refers by default: "
            f"{deployed.get('method', '')}. The headline referral above uses the pooled temperature and "
            "threshold.\n\n"
            + markdown_table(
                header=["acquisition", "malignant / benign", "sensitivity", "specificity", "referred", "urgent"],
                rows=rows,
            )
        )
    return sections


def how_to_read(m: Mapping[str, Any]) -> str:
    space = ", ".join(f"`{name}`" for name in m.get("label_space", []))
    return (
        "## How to read this\n\n"
        f"Accuracy, balanced accuracy, macro AUC, ECE, Brier, the per-class table, the class ROC curves, the "
        f"reliability diagram and the confusion matrix use the model's probabilities **restricted to the "
        f"diagnoses this evaluation set can be labelled with** ({space}) and renormalised to sum to 1; a model "
        f"with more classes than the set is not penalised for probability on classes the set cannot contain. "
        f"The **referral** numbers use the **full model output**, as the deployed system does: the summed "
        f"probability of every malignant class, compared with the threshold chosen on the validation split to "
        f"reach the target sensitivity there. The test sets were never used to choose anything (not the "
        f"checkpoint, the temperature or the threshold), so the referral sensitivity here is an honest estimate "
        f"of what that threshold achieves on new images of this kind. Balanced accuracy and macro AUC average "
        f"over the classes present in the set (or group), so groups with different case mixes are not directly "
        f"comparable. Intervals are 95% stratified bootstrap "
        f'intervals ({BOOTSTRAP_RESAMPLES:,} resamples). "n/a" marks a value that is undefined on this set (for example a '
        f"sensitivity with no malignant images). The {fmt(m.get('n_excluded', 0))} images whose diagnosis the "
        f"model has no output for are left out of every number here, the referral included; Merkel cell "
        f"carcinoma and cutaneous metastases would be among them, so this report does not measure how the model "
        f"treats those lesions."
    )


def report_sections(result: EvaluationResult) -> list[str]:
    m = result.metrics
    sections = [
        f"# Evaluation report: {m.get('dataset', result.name)}",
        f"> {m.get('disclaimer', DISCLAIMER)}",
        f"Model: `{m.get('model', 'unknown')}`. Probabilities {'calibrated (temperature scaling)' if m.get('calibrated', True) else 'uncalibrated'}. "
        f"Label space: {', '.join(m.get('label_space', result.label_space_names))}. "
        f"Class call: {m.get('class_call', 'arg-max')}.",
        "## Headline\n\n" + markdown_table(header=["metric", "value", "95% CI"], rows=headline_rows(m)),
        f"## Referral\n\n![Referral ROC]({REFERRAL_ROC_FILE})",
    ]
    if m.get("per_class"):
        sections.append("## Per class\n\n" + per_class_table(m["per_class"]) + f"\n\n![ROC per class]({ROC_FILE})")
    for key, title in (("by_acquisition", "acquisition"), ("by_source", "source")):
        if m.get(key):
            sections.append(f"## By {title}\n\n" + group_table(title=title, groups=m[key]))
    sections += acquisition_sections(m)
    sections += [
        f"## Calibration\n\n![Reliability diagram]({RELIABILITY_FILE})",
        f"## Confusion matrix\n\n![Confusion matrix]({CONFUSION_FILE})",
        how_to_read(m),
    ]
    return sections


PLOTS: dict[str, Callable[..., Path]] = {
    ROC_FILE: plot_class_roc,
    REFERRAL_ROC_FILE: plot_referral_roc,
    RELIABILITY_FILE: plot_reliability,
    CONFUSION_FILE: plot_confusion,
}


def write_report(result: EvaluationResult, out: Path) -> Path:
    """Write the four plots and ``report.md`` (which links them relatively) into ``out``; returns the report path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for file_name, plot in PLOTS.items():
        plot(result=result, path=out / file_name)
    path = out / REPORT_FILE
    atomic_write_text(path, "\n\n".join(report_sections(result)) + "\n")
    return path


# --- MODEL_CARD.md ----------------------------------------------------------------------------------


def card_details(meta: Mapping[str, Any]) -> str:
    architecture = meta.get("architecture", {})
    training = meta.get("training", {})
    rows = [
        ["name", str(meta.get("name", "unknown"))],
        [
            "architecture",
            f"{architecture.get('name', 'unknown')} (stem {architecture.get('stem', 'n/a')}), "
            f"{initialisation(architecture)}",
        ],
        ["classes", ", ".join(f"`{c}`" for c in meta.get("classes", []))],
        ["taxonomy version", str(meta.get("taxonomy_version", "n/a"))],
        ["code version", str(meta.get("code_version", "n/a"))],
        ["best epoch (by validation balanced accuracy)", fmt(training.get("best_epoch"))],
        ["weights", f"{meta.get('weights_dtype', 'n/a')}, SHA-256 `{meta.get('weights_sha256', 'n/a')}`"],
    ]
    return "## Model details\n\n" + markdown_table(header=["field", "value"], rows=rows)


def card_intended_use() -> str:
    return (
        "## Intended use\n\n"
        "* **Research prototype** for studying image-based triage of skin lesions: which lesions a model "
        "would flag for referral, and how reliable that flag is.\n"
        "* Triage **research** and **education** (teaching how such models work and fail).\n"
        "* **Not a diagnostic device.** It must not be used to diagnose, treat or exclude any disease, or to "
        "decide whether a person sees a clinician. It has no regulatory clearance."
    )


def initialisation(architecture: Mapping[str, Any]) -> str:
    """How the weights started, from the bundle's ``architecture.pretrained`` (absent: an older bundle, scratch)."""
    pretrained = str(architecture.get("pretrained", "none"))
    if pretrained == "none":
        return "trained from scratch"
    if pretrained in ("imagenet", "torchvision"):
        return "initialised from ImageNet-trained weights and fine-tuned end to end"
    return f"initialised from the weights file `{Path(pretrained).name}` and fine-tuned"


def masked_artefacts(meta: Mapping[str, Any]) -> list[str]:
    """E.g. ["dermnet: corner_watermark", "sd198: caption_bar"]: what was removed, per source, in preprocessing."""
    masked = (meta.get("preprocessing") or {}).get("mask_watermark_sources") or []
    return [f"{name}: {SOURCES[name].artefact if name in SOURCES else 'unknown'}" for name in masked]


def training_data(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    """``training.data`` of model.json, or an empty mapping: a bundle saved by hand may lack it."""
    return (meta.get("training") or {}).get("data") or {}


def malignant_class_names(meta: Mapping[str, Any]) -> list[str]:
    """Full names of the malignant classes the model has: what its referral sensitivity was measured on."""
    codes = [c for c in meta.get("classes", []) if c in DIAGNOSES and is_malignant(DIAGNOSES[c].group)]
    return [DIAGNOSES[c].name.lower() for c in codes if c not in NOT_IN_TRAINING]


def card_unseen_diagnoses(meta: Mapping[str, Any]) -> str:
    """The safety statement the card exists for: the target lesions are absent from training, so their referral is untested.

    Written from ``diagnoses_train``, so that a future bundle trained on such images does not carry a
    false statement; a bundle that does not record its training diagnoses is described as unseen,
    the safe reading for every dataset this project uses.
    """
    trained = training_data(meta).get("diagnoses_train") or {}
    lines = []
    for code, name in NOT_IN_TRAINING.items():
        n = int(trained.get(code, 0) or 0)
        if n:
            lines.append(f"* {name[0].upper() + name[1:]}: {n} training images, too few to measure its referral.")
        else:
            lines.append(
                f"* **{name[0].upper() + name[1:]} was NOT in the training data**: the model has never seen one."
            )
    measured = ", ".join(malignant_class_names(meta)) or "not recorded"
    return (
        "## Merkel cell carcinoma and cutaneous metastases\n\n" + "\n".join(lines) + "\n\n"
        "The project exists to flag lesions that could be **Merkel cell carcinoma** or a **cutaneous metastasis**, "
        "but the public datasets it is trained on contain none (or next to none). The model does not recognise "
        "these diagnoses: a referral of such a lesion rests entirely on the generic malignant-vs-benign score "
        "(the summed probability of the malignant classes) reaching the threshold. **Its referral of such "
        f"lesions is untested**: the referral sensitivities below were measured on the malignant classes in training "
        f"({measured}) and may not "
        "transfer to lesions that look unlike all of them."
    )


def split_description(policy: Mapping[str, Any]) -> str:
    strategy = str(policy.get("strategy", "n/a"))
    return f"{strategy}; grouped by {policy['grouped_by']}" if policy.get("grouped_by") else strategy


def card_training_data(meta: Mapping[str, Any]) -> str:
    data = training_data(meta)
    sources = [
        [
            str(s.get("source", "?")),
            str(s.get("licence", "n/a")),
            str(s.get("citation", "")),
            split_description(s),
        ]
        for s in data.get("sources", [])
    ]
    parts = [
        "## Training data",
        markdown_table(header=["source", "licence", "citation", "split"], rows=sources)
        if sources
        else "No source list recorded.",
    ]
    if data.get("images"):
        images = [[key, fmt(n)] for key, n in data["images"].items()]
        parts.append(
            "Images per source and split:\n\n" + markdown_table(header=["source/split", "images"], rows=images)
        )
    if data.get("diagnoses_train"):
        diagnoses = [[code, fmt(n)] for code, n in data["diagnoses_train"].items()]
        parts.append(
            "Training images per diagnosis:\n\n" + markdown_table(header=["diagnosis", "images"], rows=diagnoses)
        )
    if data.get("acquisition"):
        acquisition = [[kind, fmt(n)] for kind, n in data["acquisition"].items()]
        parts.append(
            "Images per acquisition type (all splits):\n\n"
            + markdown_table(header=["acquisition", "images"], rows=acquisition)
        )
    return "\n\n".join(parts)


def card_preprocessing(meta: Mapping[str, Any]) -> str:
    p = meta.get("preprocessing", {}) or {}
    normalization = p.get("normalization", {}) or {}
    masked = masked_artefacts(meta)
    rows = [
        ["input size", f"{fmt(p.get('input_size'))} px"],
        ["resize", str(p.get("resize", "n/a"))],
        ["normalisation", f"mean {normalization.get('mean', 'n/a')}, std {normalization.get('std', 'n/a')}"],
        ["source artefacts removed (watermark corner filled, caption bar cropped)", ", ".join(masked) or "none"],
    ]
    return "## Preprocessing\n\n" + markdown_table(header=["step", "value"], rows=rows)


def card_calibration(meta: Mapping[str, Any]) -> str:
    c = meta.get("calibration", {}) or {}
    rows = [
        ["temperature", fmt(c.get("temperature"))],
        ["referral threshold (malignancy score)", fmt(c.get("referral_threshold"))],
        ["target sensitivity on validation", fmt(c.get("target_sensitivity"))],
    ]
    rows += [[f"validation {key.replace('_', ' ')}", fmt(value)] for key, value in (c.get("validation") or {}).items()]
    urgent = c.get("urgent") or {}
    if urgent:
        rows += [
            ["urgent threshold (malignancy score)", fmt(urgent.get("threshold"))],
            ["urgent: target specificity on validation", fmt(urgent.get("target_specificity"))],
            ["urgent: validation sensitivity", fmt(urgent.get("validation_sensitivity"))],
            ["urgent: validation specificity", fmt(urgent.get("validation_specificity"))],
        ]
    gate = meta.get("uncertainty") or {}
    if gate:
        rates = gate.get("validation_rates") or {}
        rows += [
            ["uncertainty gate", str(gate.get("method", "n/a"))],
            [
                "out of distribution above (Mahalanobis distance)",
                f"{fmt(gate.get('ood_threshold'))} (validation quantile {fmt(gate.get('ood_quantile'))})",
            ],
            [
                "low confidence above (normalised entropy)",
                f"{fmt(gate.get('entropy_threshold'))} (validation quantile {fmt(gate.get('low_confidence_quantile'))})",
            ],
            ["validation share the model cannot assess", fmt(rates.get("cannot_assess"))],
        ]
    classifier = meta.get("acquisition_classifier") or {}
    if classifier:
        accuracy = classifier.get("validation_accuracy") or {}
        per_type = ", ".join(
            f"{kind} {fmt(v.get('accuracy'))}" for kind, v in (accuracy.get("by_acquisition") or {}).items()
        )
        rows += [
            ["acquisition classifier", str(classifier.get("method", "n/a"))],
            [
                "acquisition classifier: training images",
                ", ".join(f"{k} {fmt(v)}" for k, v in (classifier.get("fitted_on") or {}).items()),
            ],
            ["acquisition classifier: validation accuracy", f"{fmt(accuracy.get('accuracy'))} ({per_type})"],
        ]
    decision = meta.get("decision") or {}
    if decision:
        rows.append(["class call (chosen on validation balanced accuracy)", str(decision.get("rule", "argmax"))])
        rows += [
            [f"validation balanced accuracy, {rule} call", fmt(value)]
            for rule, value in (decision.get("validation_balanced_accuracy") or {}).items()
        ]
    return (
        "## Calibration\n\nFitted on the validation split only: one temperature for all logits (minimising "
        "validation NLL), then the largest referral threshold that still refers the target share of malignant "
        "validation lesions. The referral engine's urgent threshold (the smallest keeping the target specificity) "
        "and the uncertainty gate's thresholds (quantiles of validation scores) are fitted on the same split; the "
        "gate's class statistics on the training split.\n\n"
        + markdown_table(header=["quantity", "value"], rows=rows)
        + card_acquisition_calibration(c)
    )


def card_acquisition_calibration(calibration: Mapping[str, Any]) -> str:
    """The per-acquisition temperatures and thresholds (empty for a bundle calibrated before they existed)."""
    entries = calibration.get("by_acquisition") or {}
    if not entries:
        return ""
    rows = []
    for kind, e in entries.items():
        v, urgent = e.get("validation") or {}, e.get("urgent") or {}
        rows.append(
            [
                kind,
                fmt(e.get("temperature")),
                fmt(e.get("referral_threshold")),
                f"{fmt(v.get('referral_sensitivity'))} / {fmt(v.get('referral_specificity'))}",
                fmt(urgent.get("threshold")),
                f"{fmt(urgent.get('validation_sensitivity'))} / {fmt(urgent.get('validation_specificity'))}",
                "pooled values" if e.get("fallback") else fmt(v.get("n_images")),
                str(e.get("fallback") or ""),
            ]
        )
    header = [
        "acquisition",
        "temperature",
        "referral threshold",
        "referral sens. / spec.",
        "urgent threshold",
        "urgent sens. / spec.",
        "validation images",
        "fallback",
    ]
    return (
        "\n\nPer acquisition type: the same fit on each type's validation images only, applied to the type the "
        "user states or the acquisition classifier reads; a type with too few images keeps the pooled values.\n\n"
        + markdown_table(header=header, rows=rows)
    )


def value_with_ci(*, value: Any, ci95: Mapping[str, Sequence[float]] | None, key: str) -> str:
    """A value followed by its bootstrap interval when there is one, in one table cell."""
    interval = fmt_ci(ci95=ci95, key=key)
    return f"{fmt(value)} {interval}".strip()


def card_metrics(meta: Mapping[str, Any]) -> str:
    evaluations = meta.get("metrics", {}) or {}
    if not evaluations:
        return "## Metrics\n\nNo evaluation recorded in this bundle."
    header = [
        "evaluation set",
        "images",
        "accuracy",
        "balanced accuracy",
        "macro AUC",
        "ECE",
        "referral sensitivity",
        "referral specificity",
        "referral AUC",
    ]
    rows = []
    for name, m in evaluations.items():
        ci, referral = m.get("ci95"), m.get("referral", {}) or {}
        rows.append(
            [name, fmt(m.get("n_images"))]
            + [
                value_with_ci(value=m.get(k), ci95=ci, key=k)
                for k in ("accuracy", "balanced_accuracy", "macro_auc", "ece")
            ]
            + [
                value_with_ci(value=referral.get(k), ci95=ci, key=f"referral_{k}")
                for k in ("sensitivity", "specificity", "auc")
            ]
        )
    return (
        "## Metrics\n\nValues with 95% stratified bootstrap intervals in brackets. Multiclass metrics use the "
        "probabilities restricted to each set's label space; referral metrics use the full output and the "
        "validation threshold. The validation set chose the checkpoint, temperature and threshold, so its "
        "numbers are optimistic; the test sets chose nothing.\n\n" + markdown_table(header=header, rows=rows)
    )


def acquisition_mix(meta: Mapping[str, Any]) -> str:
    """E.g. "77% dermoscopic, 23% clinical", from the recorded counts; empty when they were not recorded."""
    counts = training_data(meta).get("acquisition") or {}
    total = sum(counts.values())
    if not total:
        return ""
    return ", ".join(f"{100 * n / total:.0f}% {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def card_limitations(meta: Mapping[str, Any]) -> str:
    images = training_data(meta).get("images") or {}
    n_train = sum(n for key, n in images.items() if key.endswith("/train"))
    size = (meta.get("preprocessing") or {}).get("input_size")
    mix = acquisition_mix(meta)
    architecture = meta.get("architecture") or {}
    sources = {policy.get("source") for policy in training_data(meta).get("sources") or []}
    masked = masked_artefacts(meta)
    skin_types = (
        "only Fitzpatrick17k records Fitzpatrick skin type (its results by skin type are not reported here)"
        if "fitzpatrick17k" in sources
        else "the training sets do not record Fitzpatrick skin type"
    )
    return (
        "## Limitations\n\n"
        f"* **Small model** ({architecture.get('name', 'n/a')}, {initialisation(architecture)}; "
        f"{n_train or 'an unrecorded number of'} training images) at **low resolution** ({fmt(size)} px): fine "
        "dermoscopic structures are lost, and it is below the accuracy of large models trained at full size.\n"
        f"* **Dermoscopic vs clinical shift**{f' (images: {mix})' if mix else ''}: dermoscopic and clinical "
        "photographs look different, and in public data the acquisition type is confounded with the source and "
        "its case mix, so the model may partly learn the camera rather than the lesion. Compare the "
        "per-acquisition results in each evaluation report; performance on phone photographs is unmeasured "
        "unless an evaluation set above contains them.\n"
        f"* **Skin-type coverage is largely unknown**: {skin_types}, and dermatology image collections are known "
        "to under-represent dark skin.\n"
        "* **Source artefacts**: "
        + (
            f"removed at training and evaluation for {', '.join(masked)}; "
            if masked
            else "none was removed; watermarks or caption bars of a source can be learnt as shortcuts; "
        )
        + "other artefacts (rulers, ink marks, vignetting, atlas framing) may still be learnt as shortcuts.\n"
        "* The referral threshold is a validation estimate: its sensitivity on new data varies around the target "
        "(see the intervals), and on lesions unlike any in training it is unknown."
    )


def card_reproduce(meta: Mapping[str, Any]) -> str:
    config = meta.get("training", {}).get("config")
    text = (
        "## How to reproduce\n\n"
        f"Check out the code at version `{meta.get('code_version', 'n/a')}`, stage the datasets listed above "
        "(`skintriage data list` says how to obtain each), save the configuration below as `config.yaml` and run "
        "`skintriage train config.yaml`. Rerunning the same command resumes an interrupted run; evaluation "
        "reports are written to `runs/<name>/eval/`."
    )
    if config:
        text += "\n\n```yaml\n" + yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False) + "```"
    return text


def card_title(meta: dict, fallback: str) -> str:
    """A title a person reads: what network, from which weights, trained on which data (the run name after it)."""
    architecture = meta.get("architecture") or {}
    name = str(architecture.get("name") or fallback)
    if name in MODELS:  # the registry's human name: "EfficientNet-Lite0", not "efficientnet_lite0"
        name = MODELS[name].description.split(" (")[0].split(",")[0] or name
    pretrained = architecture.get("pretrained")
    start = {"imagenet": "ImageNet-pretrained", None: "trained from scratch", "none": "trained from scratch"}.get(
        pretrained, f"initialised from {pretrained}"
    )
    sources = ((meta.get("training") or {}).get("data") or {}).get("sources") or []
    names = list(dict.fromkeys(str(s.get("source")) for s in sources if s.get("source")))
    data = f", fine-tuned on {', '.join(names)}" if names else ""
    return f"# About the model: {name} ({start}{data}); run `{meta.get('name', fallback)}`"


def write_model_card(bundle_dir: Path) -> Path:
    """Write ``MODEL_CARD.md`` next to ``model.json`` from the bundle's own metadata; returns its path.

    The card is generated, never hand-written, so it cannot drift from the weights it describes; every
    optional field may be missing (a bundle saved before calibration or evaluation still gets a card).
    """
    bundle_dir = Path(bundle_dir)
    meta = json.loads((bundle_dir / "model.json").read_text(encoding="utf-8"))
    sections = [
        card_title(meta, bundle_dir.name),
        f"> {DISCLAIMER}",
        card_details(meta),
        card_intended_use(),
        card_unseen_diagnoses(meta),
        card_training_data(meta),
        card_preprocessing(meta),
        card_calibration(meta),
        card_metrics(meta),
        card_limitations(meta),
        card_reproduce(meta),
    ]
    path = bundle_dir / MODEL_CARD_FILE
    atomic_write_text(path, "\n\n".join(sections) + "\n")
    return path
