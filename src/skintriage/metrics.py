"""Evaluation metrics, written to agree with the official ISIC challenge scorer where the two overlap.

The functions are small and pure, in the style of ``isic-challenge-scoring``: each takes numpy arrays
and returns a number, an array or a pandas table. Conventions shared by all of them:

* ``y_true`` holds integer class indices, shape ``(n,)``; ``probabilities`` is ``(n, k)`` with rows
  that sum to 1 (column ``j`` is class ``j``). The predicted class is the arg-max of a row; a tie goes
  to the lowest class index (``numpy.argmax``). The official scorer instead calls a tied row
  "undecided" and counts it wrong; softmax outputs essentially never tie, so the two agree in practice.
* ``weights`` is an optional per-row sample weight, shape ``(n,)``, non-negative. Every metric is a
  weighted one, and a row of weight 0 contributes nothing anywhere, as in the scorer (the ISIC 2018
  test set scores one image, ISIC_0035068, with weight 0). "A class is present" means "it has
  positive total weight".
* Binary referral functions take ``(scores, is_malignant, ...)``: a malignancy score per row, larger
  meaning more suspicious, and a boolean truth. A lesion is referred when ``score >= threshold``.
* Undefined values. A rate in a *table* whose denominator is empty (the sensitivity of a class with no
  examples, the PPV of a class never predicted, AUC of a class that is absent) is NaN, so that the
  rest of the table stays usable; the scorer reports such rates as a "freebie" 1.0, which we find
  misleading for a triage tool. A function that *summarises or chooses* (balanced accuracy, macro
  AUC, a binary AUC, a threshold search) raises ``ValueError`` instead, naming the absent class:
  averaging over fewer classes than asked for, or calibrating a threshold without malignant cases,
  would silently give a different number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import sklearn.metrics

from skintriage.common.errors import InsufficientDataError
from skintriage.data import taxonomy

ROW_SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; 1e-3 still catches logits or unnormalised scores
ECE_BINS = 15  # Guo et al. 2017 ("On Calibration of Modern Neural Networks") use 15 equal-width bins
SENSITIVITY_FLOOR = 0.8  # the 80% sensitivity level of the ISIC partial AUCs


# --- input checking ---------------------------------------------------------------------------------


def _weights(weights: np.ndarray | Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=float)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"weights has shape {w.shape}, expected ({n},): one weight per row")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    if w.sum() <= 0:
        raise ValueError("weights sum to 0: there is nothing to score")
    return w


def _multiclass_inputs(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray,
    weights: np.ndarray | Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate once, so that a wrong shape or un-normalised scores fail loudly instead of scoring garbage."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(y_true)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities has shape {p.shape}, expected (n, k) with k >= 2 classes")
    n, k = p.shape
    if y.shape != (n,):
        raise ValueError(f"y_true has shape {y.shape}, expected ({n},) to match probabilities {p.shape}")
    if n == 0:
        raise ValueError("no rows to score")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
            raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
        y = y.astype(int)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds class indices outside 0..{k - 1} (min {y.min()}, max {y.max()})")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must be finite and within [0, 1]")
    worst = np.abs(p.sum(axis=1) - 1).max()
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"probability rows must sum to 1 (worst row is off by {worst:.3g}); apply softmax to logits first"
        )
    return y, p, _weights(weights, n)


def _binary_inputs(
    scores: np.ndarray | Sequence[float],
    is_positive: np.ndarray | Sequence[bool],
    weights: np.ndarray | Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and drop weight-0 rows, as the scorer does before building a ROC curve."""
    s = np.asarray(scores, dtype=float)
    t = np.asarray(is_positive)
    if s.ndim != 1 or t.shape != s.shape:
        raise ValueError(f"scores {s.shape} and truth {t.shape} must be 1-d arrays of the same length")
    if t.dtype != bool:
        if not np.all(np.isin(t, (0, 1))):
            raise ValueError("the binary truth must be boolean (or 0/1)")
        t = t.astype(bool)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    w = _weights(weights, len(s))
    keep = w > 0
    return s[keep], t[keep], w[keep]


def _require_both(is_positive: np.ndarray, what: str) -> None:
    if not is_positive.any():
        raise InsufficientDataError(f"{what} is undefined: there are no positive (malignant) rows with weight > 0")
    if is_positive.all():
        raise InsufficientDataError(f"{what} is undefined: there are no negative (benign) rows with weight > 0")


def _check_rate(value: float, name: str) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")


def _classes_to_average(y: np.ndarray, w: np.ndarray, k: int, classes: Sequence[int] | None, metric: str) -> list[int]:
    chosen = list(range(k)) if classes is None else [int(c) for c in classes]
    if not chosen or any(not 0 <= c < k for c in chosen):
        raise ValueError(f"classes must be a non-empty list of indices in 0..{k - 1}, got {classes}")
    absent = [c for c in chosen if w[y == c].sum() <= 0]
    if absent:
        raise ValueError(
            f"{metric} is undefined: class(es) {absent} have no rows with weight > 0 in y_true; "
            f"pass classes=[...] to average over the classes that are present"
        )
    return chosen


# --- multiclass -------------------------------------------------------------------------------------


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """Arg-max per row; ties go to the lowest index, so that the prediction is a pure function of the row."""
    return np.asarray(probabilities).argmax(axis=1)


def decision_probabilities(probabilities: np.ndarray, prior: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
    """Probabilities whose arg-max (:func:`predicted_classes`) is a bundle's class call: the one place that rule is applied.

    ``prior=None``: the plain arg-max, so ``probabilities`` as they are. Otherwise the class-balanced arg-max
    (``calibration``'s notes): each probability divided by its class's training ``prior``, renormalised per row.
    Probabilities, AUCs and the malignancy score never use these; only the class call (accuracy, confusion) does.
    """
    if prior is None:
        return np.asarray(probabilities)
    adjusted = np.asarray(probabilities, dtype=np.float64) / np.asarray(prior, dtype=np.float64)
    return adjusted / adjusted.sum(axis=1, keepdims=True)


def confusion_matrix(
    y_true: np.ndarray | Sequence[int], probabilities: np.ndarray, weights: np.ndarray | Sequence[float] | None = None
) -> np.ndarray:
    """Weighted counts, rows = true class, columns = predicted class, so that row sums are class supports.

    Float, not int, because weights are; with no weights the entries are whole numbers.
    """
    y, p, w = _multiclass_inputs(y_true, probabilities, weights)
    k = p.shape[1]
    matrix = np.zeros((k, k), dtype=float)
    np.add.at(matrix, (y, predicted_classes(p)), w)
    return matrix


def accuracy(
    y_true: np.ndarray | Sequence[int], probabilities: np.ndarray, weights: np.ndarray | Sequence[float] | None = None
) -> float:
    """Plain accuracy; reported for completeness, since on HAM10000 (two thirds naevi) it rewards ignoring rare classes."""
    y, p, w = _multiclass_inputs(y_true, probabilities, weights)
    return float(np.sum(w * (predicted_classes(p) == y)) / w.sum())


def balanced_accuracy(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray,
    weights: np.ndarray | Sequence[float] | None = None,
    *,
    classes: Sequence[int] | None = None,
) -> float:
    """Mean per-class recall: ISIC 2018's headline "balanced multiclass accuracy", which weighs every class equally.

    Averages over ``classes`` (default: all ``k`` columns). A requested class with no examples raises
    ``ValueError``; the scorer would silently average over the classes present instead, which is what
    passing ``classes=`` explicitly gives here.
    """
    y, p, w = _multiclass_inputs(y_true, probabilities, weights)
    chosen = _classes_to_average(y, w, p.shape[1], classes, "balanced accuracy")
    matrix = confusion_matrix(y, p, w)
    recalls = [matrix[c, c] / matrix[c].sum() for c in chosen]
    return float(np.mean(recalls))


def _one_vs_rest_auc(is_positive: np.ndarray, scores: np.ndarray, w: np.ndarray) -> float:
    keep = w > 0
    t, s, ww = is_positive[keep], scores[keep], w[keep]
    if t.all() or not t.any():
        return float("nan")
    return float(sklearn.metrics.roc_auc_score(t, s, sample_weight=ww))


def _one_vs_rest_average_precision(is_positive: np.ndarray, scores: np.ndarray, w: np.ndarray) -> float:
    keep = w > 0
    t, s, ww = is_positive[keep], scores[keep], w[keep]
    if not t.any():
        return float("nan")
    return float(sklearn.metrics.average_precision_score(t, s, sample_weight=ww))


def macro_auc(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray,
    weights: np.ndarray | Sequence[float] | None = None,
    *,
    classes: Sequence[int] | None = None,
) -> float:
    """Unweighted mean of one-vs-rest ROC AUCs, the scorer's ``macro_average['auc']``; threshold-free, unlike accuracy.

    Each class's AUC ranks that class's probability column against every other row. Averages over
    ``classes`` (default all); a requested class with no examples (or that is every example) raises.
    """
    y, p, w = _multiclass_inputs(y_true, probabilities, weights)
    chosen = _classes_to_average(y, w, p.shape[1], classes, "macro AUC")
    aucs = [_one_vs_rest_auc(y == c, p[:, c], w) for c in chosen]
    if np.isnan(aucs).any():
        raise ValueError("macro AUC is undefined: some class is the only class present")
    return float(np.mean(aucs))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def per_class_metrics(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray,
    weights: np.ndarray | Sequence[float] | None = None,
    *,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One-vs-rest table per class, the counterpart of the scorer's ``per_category`` table.

    Columns: ``support`` (weighted count of true examples), ``sensitivity``, ``specificity``, ``ppv``,
    ``npv`` (all at the arg-max decision, so that mean sensitivity equals balanced accuracy), ``auc``,
    ``auc_sens_80`` (:func:`auc_above_sensitivity` at 0.8) and ``ap`` (average precision). The scorer
    instead thresholds each column at 0.5 for the four rates, which with 7 classes can leave a row
    predicted as nothing; its AUC, auc_sens_80 and AP are the same as ours. Undefined entries are NaN.
    """
    y, p, w = _multiclass_inputs(y_true, probabilities, weights)
    k = p.shape[1]
    names = [str(c) for c in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} probability columns")
    matrix = confusion_matrix(y, p, w)
    total = matrix.sum()
    rows = []
    for c in range(k):
        tp = matrix[c, c]
        fn = matrix[c].sum() - tp
        fp = matrix[:, c].sum() - tp
        tn = total - tp - fn - fp
        positive = y == c
        both = w[positive].sum() > 0 and w[~positive].sum() > 0
        rows.append(
            {
                "support": tp + fn,
                "sensitivity": _ratio(tp, tp + fn),
                "specificity": _ratio(tn, tn + fp),
                "ppv": _ratio(tp, tp + fp),
                "npv": _ratio(tn, tn + fn),
                "auc": _one_vs_rest_auc(positive, p[:, c], w),
                "auc_sens_80": auc_above_sensitivity(p[:, c], positive, SENSITIVITY_FLOOR, w) if both else float("nan"),
                "ap": _one_vs_rest_average_precision(positive, p[:, c], w),
            }
        )
    return pd.DataFrame(rows, index=pd.Index(names, name="class"))


# --- partial AUCs -----------------------------------------------------------------------------------


def _roc_above(s: np.ndarray, t: np.ndarray, w: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve from where it first reaches TPR = ``level`` (a point interpolated there) to (1, 1)."""
    fpr, tpr, _ = sklearn.metrics.roc_curve(t, s, sample_weight=w, drop_intermediate=False)
    index = int(tpr.searchsorted(level, side="left"))  # >= 1, since the curve starts at (0, 0) and level > 0
    # The two points around the crossing never share a TPR, because index is the left end of any run.
    crossing = float(np.interp(level, tpr[index - 1 : index + 1], fpr[index - 1 : index + 1]))
    return np.insert(fpr[index:], 0, crossing), np.insert(tpr[index:], 0, level)


def auc_above_sensitivity(
    scores: np.ndarray | Sequence[float],
    is_positive: np.ndarray | Sequence[bool],
    sensitivity_threshold: float = SENSITIVITY_FLOOR,
    weights: np.ndarray | Sequence[float] | None = None,
) -> float:
    """The scorer's ``auc_above_sensitivity`` (its ``auc_sens_80`` column): how well a model ranks at high sensitivity.

    Definition, ported from ``isic_challenge_scoring.metrics`` 5.6.0: find the FPR ``f*`` where the
    ROC curve first reaches TPR = ``sensitivity_threshold`` (linear interpolation), and integrate the
    full height of the curve (TPR, down to 0) over FPR from ``f*`` to 1. Range 0..1: a perfect ranking
    gives 1, chance gives (1 - 0.8**2) / 2 = 0.18. This is *not* the ISIC 2024 pAUC (range 0..0.2);
    see :func:`partial_auc_above_tpr`, which equals this minus ``0.8 * (1 - f*)``.
    """
    s, t, w = _binary_inputs(scores, is_positive, weights)
    _check_rate(sensitivity_threshold, "sensitivity_threshold")
    _require_both(t, "auc_above_sensitivity")
    segment_fpr, segment_tpr = _roc_above(s, t, w, sensitivity_threshold)
    return float(sklearn.metrics.auc(segment_fpr, segment_tpr))


def partial_auc_above_tpr(
    scores: np.ndarray | Sequence[float],
    is_positive: np.ndarray | Sequence[bool],
    min_tpr: float = SENSITIVITY_FLOOR,
    weights: np.ndarray | Sequence[float] | None = None,
) -> float:
    """ISIC 2024 (SLICE-3D) pAUC: the ROC area above TPR = ``min_tpr``, range 0..(1 - min_tpr), so 0..0.2 at 0.8.

    It only credits a model for the part of its ROC curve where it already finds 80% of cancers,
    which is the regime a triage tool works in. Computed exactly as the area between the
    (piecewise-linear) ROC curve and the horizontal line TPR = ``min_tpr``, right of where the curve
    crosses it; this equals the challenge's Kaggle formula (labels and scores flipped,
    ``roc_auc_score(max_fpr=1 - min_tpr)``, McClish correction undone). Chance gives (1 - min_tpr)**2 / 2 = 0.02. isic-challenge-scoring
    5.6.0 has no such function; its nearest, :func:`auc_above_sensitivity`, integrates down to TPR 0.
    """
    s, t, w = _binary_inputs(scores, is_positive, weights)
    if not 0 < min_tpr < 1:
        raise ValueError(f"min_tpr must be in (0, 1), got {min_tpr}")
    _require_both(t, "partial AUC")
    segment_fpr, segment_tpr = _roc_above(s, t, w, min_tpr)
    return float(sklearn.metrics.auc(segment_fpr, segment_tpr - min_tpr))


# --- referral (malignant vs benign) -----------------------------------------------------------------


def malignant_columns(class_codes: Sequence[str]) -> np.ndarray:
    """Boolean mask over ``class_codes`` (canonical diagnosis codes): which classes are malignant.

    Which are malignant comes from the taxonomy (:func:`skintriage.data.taxonomy.malignant_indices`; ``akiec``
    counts as malignant, see ``taxonomy.py``).
    """
    mask = np.zeros(len(class_codes), dtype=bool)
    mask[taxonomy.malignant_indices(class_codes)] = True
    return mask


def malignancy_score(probabilities: np.ndarray, class_codes: Sequence[str]) -> np.ndarray:
    """Per row, :func:`skintriage.data.taxonomy.malignancy_probability`: the summed probability of the malignant classes
    (:func:`skintriage.data.taxonomy.malignant_indices`), at most 1; what a referral threshold is applied to."""
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(class_codes):
        raise ValueError(f"probabilities {p.shape} do not have one column per class code ({len(class_codes)})")
    # float sums can reach 1 + 2e-16
    return np.clip(p[:, taxonomy.malignant_indices(class_codes)].sum(axis=1), 0.0, 1.0)


def _operating_points(s: np.ndarray, t: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct threshold, descending (``+inf`` = refer nobody first), with its sensitivity and specificity."""
    order = np.argsort(-s, kind="stable")
    s, t, w = s[order], t[order], w[order]
    last_of_run = np.r_[s[1:] != s[:-1], True]  # referral is score >= threshold, so ties enter together
    positives = np.cumsum(w * t)[last_of_run]
    negatives = np.cumsum(w * ~t)[last_of_run]
    thresholds = np.r_[np.inf, s[last_of_run]]
    sensitivity = np.r_[0.0, positives / np.sum(w * t)]
    n_negative = np.sum(w * ~t)
    specificity = 1 - np.r_[0.0, negatives / n_negative] if n_negative > 0 else np.full(len(thresholds), np.nan)
    return thresholds, sensitivity, specificity


_RATE_SLACK = 1e-12  # weighted sums accumulate rounding; a target of exactly 0.9 must accept 9 of 10


def referral_roc_auc(
    scores: np.ndarray | Sequence[float],
    is_malignant: np.ndarray | Sequence[bool],
    weights: np.ndarray | Sequence[float] | None = None,
) -> float:
    """ROC AUC of malignant vs benign: the threshold-free summary of how well the score orders referrals."""
    s, t, w = _binary_inputs(scores, is_malignant, weights)
    _require_both(t, "referral ROC AUC")
    return float(sklearn.metrics.roc_auc_score(t, s, sample_weight=w))


def sensitivity_specificity_at_threshold(
    scores: np.ndarray | Sequence[float],
    is_malignant: np.ndarray | Sequence[bool],
    threshold: float,
    weights: np.ndarray | Sequence[float] | None = None,
) -> tuple[float, float]:
    """(sensitivity, specificity) when every lesion with ``score >= threshold`` is referred: how a chosen threshold performs.

    A side with no examples is NaN (e.g. specificity on a malignant-only set).
    """
    s, t, w = _binary_inputs(scores, is_malignant, weights)
    refer = s >= threshold
    return _ratio(np.sum(w * (refer & t)), np.sum(w * t)), _ratio(np.sum(w * (~refer & ~t)), np.sum(w * ~t))


def sensitivity_at_specificity(
    scores: np.ndarray | Sequence[float],
    is_malignant: np.ndarray | Sequence[bool],
    target_specificity: float,
    weights: np.ndarray | Sequence[float] | None = None,
) -> float:
    """Best sensitivity among thresholds whose specificity is at least the target: cancers caught at a fixed referral burden.

    Only real operating points (thresholds at observed scores) count; no interpolation between them,
    because no threshold achieves an interpolated point.
    """
    s, t, w = _binary_inputs(scores, is_malignant, weights)
    _check_rate(target_specificity, "target_specificity")
    _require_both(t, "sensitivity at specificity")
    _, sensitivity, specificity = _operating_points(s, t, w)
    return float(sensitivity[specificity >= target_specificity - _RATE_SLACK].max())


def specificity_at_sensitivity(
    scores: np.ndarray | Sequence[float],
    is_malignant: np.ndarray | Sequence[bool],
    target_sensitivity: float,
    weights: np.ndarray | Sequence[float] | None = None,
) -> float:
    """Best specificity among thresholds whose sensitivity is at least the target: referral burden at a safety floor."""
    s, t, w = _binary_inputs(scores, is_malignant, weights)
    _check_rate(target_sensitivity, "target_sensitivity")
    _require_both(t, "specificity at sensitivity")
    _, sensitivity, specificity = _operating_points(s, t, w)
    return float(specificity[sensitivity >= target_sensitivity - _RATE_SLACK].max())


def referral_threshold_for_sensitivity(
    scores: np.ndarray | Sequence[float],
    is_malignant: np.ndarray | Sequence[bool],
    target_sensitivity: float,
    weights: np.ndarray | Sequence[float] | None = None,
) -> float:
    """The largest threshold whose sensitivity (referral at ``score >= threshold``) is at least the target.

    Calibration runs this on validation data: the largest such threshold refers the fewest benign
    lesions while keeping the safety floor. It is always one of the malignant scores; any larger
    threshold misses that case and falls below the target. Needs malignant rows (else ``InsufficientDataError``),
    but not benign ones.
    """
    s, t, w = _binary_inputs(scores, is_malignant, weights)
    _check_rate(target_sensitivity, "target_sensitivity")
    if not t.any():
        raise InsufficientDataError(
            "a referral threshold cannot be calibrated: there are no malignant rows with weight > 0"
        )
    thresholds, sensitivity, _ = _operating_points(s, t, w)
    return float(thresholds[np.argmax(sensitivity >= target_sensitivity - _RATE_SLACK)])


def referral_threshold_for_specificity(
    scores: np.ndarray | Sequence[float],
    is_malignant: np.ndarray | Sequence[bool],
    target_specificity: float,
    weights: np.ndarray | Sequence[float] | None = None,
) -> float:
    """The smallest threshold whose specificity is at least the target: the most cancers flagged while keeping
    false alarms at ``1 - target_specificity``; the referral engine's *urgent* cut-off. Needs benign rows."""
    s, t, w = _binary_inputs(scores, is_malignant, weights)
    _check_rate(target_specificity, "target_specificity")
    if not (~t).any():
        raise InsufficientDataError(
            "a specificity threshold cannot be calibrated: there are no benign rows with weight > 0"
        )
    thresholds, _, specificity = _operating_points(s, t, w)
    return float(thresholds[np.flatnonzero(specificity >= target_specificity - _RATE_SLACK).max()])


# --- calibration ------------------------------------------------------------------------------------


def confidence_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(bin index per row, the ``n_bins + 1`` edges): equal-width, right-closed bins ``(0, 1/n], ..., (1 - 1/n, 1]``.

    The one binning rule of the ECE and the reliability diagram, so that the two always agree.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], confidence, side="left"), edges


def expected_calibration_error(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray,
    weights: np.ndarray | Sequence[float] | None = None,
    *,
    n_bins: int = ECE_BINS,
) -> float:
    """Top-label ECE: does a 90%-confident prediction turn out right 90% of the time?

    Each row's confidence is its largest probability and it is correct when that class is the true
    one. Rows fall into ``n_bins`` (15) equal-width confidence bins ``(0, 1/15], (1/15, 2/15], ...,
    (14/15, 1]`` (right-closed, as in Guo et al. 2017); ECE is the weight-share-weighted mean over
    bins of |accuracy - mean confidence|. Range 0..1; empty bins contribute nothing.
    """
    y, p, w = _multiclass_inputs(y_true, probabilities, weights)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence = p.max(axis=1)
    correct = (predicted_classes(p) == y).astype(float)
    bins, _ = confidence_bins(confidence, n_bins)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        weight = w[in_bin].sum()
        if weight > 0:
            gap = np.sum(w[in_bin] * (correct[in_bin] - confidence[in_bin])) / weight
            ece += weight / w.sum() * abs(gap)
    return float(ece)


def brier_score(
    y_true: np.ndarray | Sequence[int], probabilities: np.ndarray, weights: np.ndarray | Sequence[float] | None = None
) -> float:
    """Multiclass Brier score (Brier 1950): mean over rows of the squared distance to the one-hot truth.

    Summed over classes, not averaged, so the range is 0..2 whatever ``k`` is; lower is better. Unlike
    ECE it rewards sharpness as well as calibration and needs no binning.
    """
    y, p, w = _multiclass_inputs(y_true, probabilities, weights)
    onehot = np.eye(p.shape[1])[y]
    return float(np.sum(w * np.sum((p - onehot) ** 2, axis=1)) / w.sum())


# --- uncertainty ------------------------------------------------------------------------------------


class ConfidenceInterval(NamedTuple):
    estimate: float  # the metric on all the data
    low: float
    high: float


def bootstrap_ci(
    metric_fn: Callable[..., float],
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray,
    *,
    weights: np.ndarray | Sequence[float] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> ConfidenceInterval:
    """Percentile bootstrap CI (default 95%) for ``metric_fn(y_true, probabilities)``; deterministic for a seed.

    Resampling is stratified by true class: each resample draws, with replacement, as many rows of
    each class as the data has, so every class is present in every resample and per-class metrics
    (balanced accuracy, macro AUC) never become undefined; class proportions are held fixed, so the
    interval reflects variation within classes, not in case mix. Rows of weight 0 are dropped first;
    when ``weights`` is given, ``metric_fn`` is called as ``metric_fn(y, p, weights=w)``. The interval
    is the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled values (numpy's default linear
    interpolation). A resample on which the metric is NaN raises ``ValueError``.
    """
    y, p, w = _multiclass_inputs(y_true, probabilities, weights)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    keep = w > 0
    y, p, w = y[keep], p[keep], w[keep]

    def call(index: np.ndarray) -> float:
        if weights is None:
            return float(metric_fn(y[index], p[index]))
        return float(metric_fn(y[index], p[index], weights=w[index]))

    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(y == c) for c in np.unique(y)]
    values = np.empty(n_resamples)
    for r in range(n_resamples):
        index = np.concatenate([rng.choice(rows, size=len(rows), replace=True) for rows in strata])
        values[r] = call(index)
    if np.isnan(values).any():
        raise ValueError(f"the metric was NaN on {int(np.isnan(values).sum())} of {n_resamples} resamples")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return ConfidenceInterval(call(np.arange(len(y))), float(low), float(high))
