"""The human-readable evaluation report: ``report.md`` with its plots (the model card is ``model.card``).

``metrics.json`` is complete but unreadable at a glance; a reviewer deciding whether the referral
threshold is safe needs the ROC curve with the operating point on it, the reliability diagram and the
confusion matrix next to the numbers, and the disclaimer before any of them. Everything here is
computed from an :class:`~skintriage.evaluation.result.EvaluationResult` with
the same conventions as ``evaluate.py``, so a plot never disagrees with the number printed beside it:

* multiclass plots (per-class ROC, reliability, confusion) use the probabilities restricted to the
  label space and renormalised, on rows with ``score_weight > 0``;
* the referral ROC uses the full model output (the malignancy score) and the validation threshold.

Figures are plain :class:`matplotlib.figure.Figure` objects rendered by ``savefig``, never pyplot: importing
this module selects no backend (a Gradio demo or notebook in the same process keeps its own), works on a
headless training machine, and a figure no one references is freed, so evaluating many sets does not leak.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn.metrics
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from skintriage import DISCLAIMER, metrics
from skintriage.common.atomic import atomic_path, atomic_write_text
from skintriage.common.markdown import fmt, fmt_ci, fmt_count, markdown_table
from skintriage.evaluation.result import BOOTSTRAP_RESAMPLES, EvaluationResult

REPORT_FILE = "report.md"
ROC_FILE = "roc.png"
REFERRAL_ROC_FILE = "referral_roc.png"
RELIABILITY_FILE = "reliability.png"
CONFUSION_FILE = "confusion.png"
DPI = 120


# --- the data the plots share ----------------------------------------------------------------------


def save_figure(*, figure: Figure, path: Path) -> Path:
    """Lay out and write atomically; the figure belongs to no pyplot registry, so it is freed with its last reference."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png")
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
    figure = Figure(figsize=(6.5, 6))
    axes = figure.subplots()
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
    figure = Figure(figsize=(6.5, 6))
    axes = figure.subplots()
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
    figure = Figure(figsize=(6.5, 7))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
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
    figure = Figure(figsize=(size + 1, size))
    axes = figure.subplots()
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
    for label in axes.get_xticklabels():
        label.set(rotation=45, ha="right")
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
