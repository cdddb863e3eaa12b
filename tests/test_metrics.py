"""Metrics: hand-worked cases for every function, the undefined cases, and agreement with the official ISIC scorer."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore
from isic_challenge_scoring.load_csv import parse_truth_csv

from skintriage import metrics as m

# Three classes, seven rows. Predicted (arg-max) class and its confidence in the comments.
Y = np.array([0, 0, 1, 1, 1, 2, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],  # true 0, predicted 0, conf 0.7  right
        [0.3, 0.6, 0.1],  # true 0, predicted 1, conf 0.6  wrong
        [0.2, 0.5, 0.3],  # true 1, predicted 1, conf 0.5  right
        [0.1, 0.8, 0.1],  # true 1, predicted 1, conf 0.8  right
        [0.2, 0.7, 0.1],  # true 1, predicted 1, conf 0.7  right
        [0.1, 0.1, 0.8],  # true 2, predicted 2, conf 0.8  right
        [0.5, 0.2, 0.3],  # true 2, predicted 0, conf 0.5  wrong
    ]
)
NAMES = ["a", "b", "c"]


# --- multiclass -------------------------------------------------------------------------------------


def test_confusion_matrix_rows_are_truth_columns_are_predictions():
    # true 0 -> predicted 0, 1; true 1 -> 1, 1, 1; true 2 -> 2, 0
    expected = [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    np.testing.assert_array_equal(m.confusion_matrix(Y, P), expected)


def test_confusion_matrix_sums_weights():
    # row 6 (true 2 -> 0) weighs 0 and row 3 (true 1 -> 1) weighs 2.5
    weights = [1, 1, 1, 2.5, 1, 1, 0]
    np.testing.assert_array_equal(m.confusion_matrix(Y, P, weights), [[1, 1, 0], [0, 4.5, 0], [0, 0, 1]])


def test_accuracy_and_balanced_accuracy_by_hand():
    # 5 of 7 right; per-class recall 1/2, 3/3, 1/2 -> mean 2/3
    assert m.accuracy(Y, P) == pytest.approx(5 / 7)
    assert m.balanced_accuracy(Y, P) == pytest.approx(2 / 3)


def test_weight_zero_rows_are_ignored_exactly():
    # dropping row 6 (true 2, wrong): recall 1/2, 1, 1 -> 5/6; accuracy 5/6
    weights = np.array([1, 1, 1, 1, 1, 1, 0])
    assert m.balanced_accuracy(Y, P, weights) == pytest.approx(5 / 6)
    assert m.accuracy(Y, P, weights) == pytest.approx(5 / 6)
    assert m.balanced_accuracy(Y, P, weights) == pytest.approx(m.balanced_accuracy(Y[:6], P[:6]))
    assert m.macro_auc(Y, P, weights) == pytest.approx(m.macro_auc(Y[:6], P[:6]))
    pd.testing.assert_frame_equal(m.per_class_metrics(Y, P, weights), m.per_class_metrics(Y[:6], P[:6]))


def test_ties_go_to_the_lowest_class_index():
    assert m.predicted_classes(np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4]])).tolist() == [0, 1]


def test_decision_probabilities_plain_or_class_balanced():
    p = np.array([[0.6, 0.4], [0.9, 0.1]])
    assert m.decision_probabilities(p) is p  # plain arg-max: the probabilities themselves
    balanced = m.decision_probabilities(p, [2 / 3, 1 / 3])
    np.testing.assert_allclose(balanced, [[3 / 7, 4 / 7], [9 / 11, 2 / 11]])
    assert m.predicted_classes(balanced).tolist() == [1, 0]  # the prior can change the call


def test_macro_auc_by_hand():
    # class a: positives 0.7, 0.3 vs negatives 0.2 0.1 0.2 0.1 0.5 -> 5 + 4 of 10 pairs = 0.9
    # class b: positives 0.5 0.8 0.7 vs negatives 0.2 0.6 0.1 0.2 -> 3 + 4 + 4 of 12 = 11/12
    # class c: positives 0.8, 0.3 vs negatives 0.1 0.1 0.3 0.1 0.1 -> 5 + (4 + tie 0.5) of 10 = 0.95
    assert m.macro_auc(Y, P) == pytest.approx((0.9 + 11 / 12 + 0.95) / 3)


def test_per_class_metrics_by_hand():
    table = m.per_class_metrics(Y, P, class_names=NAMES)
    assert list(table.index) == NAMES
    # a: TP 1 FN 1 FP 1 (row 6) TN 4; b: TP 3 FN 0 FP 1 (row 1) TN 3; c: TP 1 FN 1 FP 0 TN 5
    np.testing.assert_allclose(table["support"], [2, 3, 2])
    np.testing.assert_allclose(table["sensitivity"], [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(table["specificity"], [4 / 5, 3 / 4, 1])
    np.testing.assert_allclose(table["ppv"], [1 / 2, 3 / 4, 1])
    np.testing.assert_allclose(table["npv"], [4 / 5, 1, 5 / 6])
    np.testing.assert_allclose(table["auc"], [0.9, 11 / 12, 0.95])
    # average precision = sum over thresholds of recall gained x precision there:
    # a: 0.7(P) 0.5(N) 0.3(P) -> 1/2 x 1 + 1/2 x 2/3 = 5/6
    # b: 0.8(P) 0.7(P) 0.6(N) 0.5(P) -> 1/3 + 1/3 + 1/3 x 3/4 = 11/12
    # c: 0.8(P), then 0.3 holds one P and one N together -> 1/2 x 1 + 1/2 x 2/3 = 5/6
    np.testing.assert_allclose(table["ap"], [5 / 6, 11 / 12, 5 / 6])
    # mean sensitivity is the balanced accuracy, because both use the arg-max decision
    assert table["sensitivity"].mean() == pytest.approx(m.balanced_accuracy(Y, P))


def test_absent_class_raises_for_summaries_and_is_nan_in_the_table():
    y = np.array([0, 0, 1, 1])  # class 2 has no examples
    p = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no rows"):
        m.balanced_accuracy(y, p)
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no rows"):
        m.macro_auc(y, p)
    # averaging over the classes present is an explicit choice: recalls 1/2 and 1/2
    assert m.balanced_accuracy(y, p, classes=[0, 1]) == pytest.approx(1 / 2)
    row = m.per_class_metrics(y, p).loc["2"]
    assert row["support"] == 0
    assert np.isnan(row["sensitivity"]) and np.isnan(row["auc"]) and np.isnan(row["ap"])
    assert np.isnan(row["auc_sens_80"])
    # rates whose denominators are not empty stay defined: row 3 is predicted 2 (PPV 0/1), 3 of 4 are not
    assert row["ppv"] == 0
    assert row["specificity"] == pytest.approx(3 / 4)


def test_a_class_present_only_at_weight_zero_counts_as_absent():
    y, p = Y, P
    with pytest.raises(ValueError, match=r"\[2\]"):
        m.balanced_accuracy(y, p, [1, 1, 1, 1, 1, 0, 0])


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1], [[0.5, 0.5], [2.0, -1.0]], "within"),
        ([0, 1], [[0.5, 0.6], [0.5, 0.5]], "sum to 1"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], "outside 0..1"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], "shape"),
        ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], "integer"),
    ],
)
def test_bad_inputs_are_refused(y, p, message):
    with pytest.raises(ValueError, match=message):
        m.accuracy(np.array(y), np.array(p))


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        m.accuracy(Y, P, [1, 1, 1, 1, 1, 1, -1])
    with pytest.raises(ValueError, match="sum to 0"):
        m.accuracy(Y, P, np.zeros(7))


# --- partial AUCs -----------------------------------------------------------------------------------

# Referral data: ten lesions, four malignant. Referring at score >= t gives (sensitivity, specificity):
# t=0.9 (1/4, 1)  0.8 (2/4, 1)  0.7 (2/4, 5/6)  0.6 (3/4, 5/6)  0.5 (3/4, 4/6)  0.4 (3/4, 3/6)
# t=0.3 (1, 3/6)  0.2 (1, 2/6)  0.1 (1, 1/6)  0.05 (1, 0)
S = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
M = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0], dtype=bool)


def test_partial_aucs_by_hand():
    # ROC (fpr, tpr): ... (1/6, 3/4) (3/6, 3/4) (3/6, 1) ... (1, 1): TPR 0.8 is first reached at FPR 1/2.
    # ISIC 2024 pAUC: area above TPR 0.8 = (1 - 1/2) x 0.2 = 0.1
    # scorer's auc_sens_80: full height right of FPR 1/2 = (1 - 1/2) x 1 = 0.5
    assert m.partial_auc_above_tpr(S, M) == pytest.approx(0.1)
    assert m.auc_above_sensitivity(S, M) == pytest.approx(0.5)


def test_partial_aucs_when_the_curve_crosses_on_a_diagonal():
    # 0.5 holds one malignant and one benign lesion: ROC (0,0) (0,1/2) (1/2,1) (1,1).
    # TPR 0.8 is crossed at FPR 0.3 on the diagonal. pAUC: triangle 0.2 x 0.2 / 2 + 0.5 x 0.2 = 0.12
    # auc_sens_80: trapezoid 0.2 x (0.8 + 1) / 2 + 0.5 x 1 = 0.68 (= 0.12 + 0.8 x (1 - 0.3))
    scores, truth = [0.9, 0.5, 0.5, 0.1], [True, True, False, False]
    assert m.partial_auc_above_tpr(scores, truth) == pytest.approx(0.12)
    assert m.auc_above_sensitivity(scores, truth) == pytest.approx(0.68)


def test_partial_auc_extremes():
    assert m.partial_auc_above_tpr([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx(0.2)
    assert m.auc_above_sensitivity([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert m.partial_auc_above_tpr([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == pytest.approx(0.0)
    assert m.auc_above_sensitivity([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == pytest.approx(0.0)


def test_partial_auc_matches_the_isic_2024_kaggle_formula():
    """The challenge flips labels and scores, asks sklearn for the McClish-standardised pAUC, and undoes it."""
    import sklearn.metrics

    rng = np.random.default_rng(3)
    truth = rng.random(500) < 0.2
    scores = np.round(rng.random(500) * 0.6 + 0.3 * truth, 2)  # rounded, so there are ties
    max_fpr = 0.2
    scaled = sklearn.metrics.roc_auc_score(~truth, 1 - scores, max_fpr=max_fpr)
    kaggle = 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5)
    assert m.partial_auc_above_tpr(scores, truth) == pytest.approx(kaggle, abs=1e-12)


# --- referral ---------------------------------------------------------------------------------------


def test_referral_roc_auc_by_hand():
    # malignant 0.9 and 0.8 beat all 6 benign, 0.6 beats 5, 0.3 beats 3 -> 20 / 24
    assert m.referral_roc_auc(S, M) == pytest.approx(5 / 6)


def test_sensitivity_and_specificity_at_a_threshold():
    assert m.sensitivity_specificity_at_threshold(S, M, 0.55) == pytest.approx((3 / 4, 5 / 6))
    assert m.sensitivity_specificity_at_threshold(S, M, 0.6) == pytest.approx((3 / 4, 5 / 6))  # >= refers
    assert m.sensitivity_specificity_at_threshold(S, M, 0.61) == pytest.approx((2 / 4, 5 / 6))


@pytest.mark.parametrize(("target", "expected"), [(1.0, 0.5), (0.8, 0.75), (0.9, 0.5), (0.5, 1.0)])
def test_sensitivity_at_specificity(target, expected):
    # spec >= 0.8 allows t >= 0.6 (spec 5/6) -> best sens 3/4; spec 1 allows t >= 0.8 -> 2/4
    assert m.sensitivity_at_specificity(S, M, target) == pytest.approx(expected)


@pytest.mark.parametrize(("target", "expected"), [(1.0, 0.5), (0.75, 5 / 6), (0.6, 5 / 6), (0.25, 1.0)])
def test_specificity_at_sensitivity(target, expected):
    assert m.specificity_at_sensitivity(S, M, target) == pytest.approx(expected)


@pytest.mark.parametrize(("target", "expected"), [(1.0, 0.3), (0.75, 0.6), (0.6, 0.6), (0.5, 0.8), (0.25, 0.9)])
def test_referral_threshold_for_sensitivity(target, expected):
    threshold = m.referral_threshold_for_sensitivity(S, M, target)
    assert threshold == expected
    sensitivity, _ = m.sensitivity_specificity_at_threshold(S, M, threshold)
    assert sensitivity >= target
    # it is the largest such threshold: the next larger score misses the target
    larger = S[np.greater(S, threshold)]
    if len(larger):
        assert m.sensitivity_specificity_at_threshold(S, M, larger.min())[0] < target


def test_referral_threshold_meets_decimal_targets_exactly():
    # 10 malignant lesions scored 1..10: 70% sensitivity needs the top 7, so the threshold is 4
    scores = np.arange(1, 11, dtype=float)
    assert m.referral_threshold_for_sensitivity(scores, np.ones(10, dtype=bool), 0.7) == 4.0


def test_referral_threshold_with_ties_and_weights():
    # tied scores are referred together: at 0.5 the malignant one is in, sensitivity 1/2
    assert m.referral_threshold_for_sensitivity([0.5, 0.5, 0.2], [True, False, True], 0.5) == 0.5
    # a weight-0 malignant lesion does not pull the threshold down
    scores, truth = [0.9, 0.2, 0.1], [True, True, False]
    assert m.referral_threshold_for_sensitivity(scores, truth, 1.0) == 0.2
    assert m.referral_threshold_for_sensitivity(scores, truth, 1.0, weights=[1, 0, 1]) == 0.9


def test_referral_functions_need_the_classes_they_measure():
    benign_only = np.zeros(4, dtype=bool)
    scores = [0.1, 0.2, 0.3, 0.4]
    with pytest.raises(ValueError, match="no malignant rows"):
        m.referral_threshold_for_sensitivity(scores, benign_only, 0.9)
    for function in (m.sensitivity_at_specificity, m.specificity_at_sensitivity):
        with pytest.raises(ValueError, match="no positive"):
            function(scores, benign_only, 0.9)
    with pytest.raises(ValueError, match="no negative"):
        m.referral_roc_auc(scores, ~benign_only)
    # a threshold search needs malignant lesions only
    assert m.referral_threshold_for_sensitivity(scores, ~benign_only, 0.5) == 0.3
    # describing a fixed threshold: the side with no examples is NaN
    sensitivity, specificity = m.sensitivity_specificity_at_threshold(scores, benign_only, 0.25)
    assert np.isnan(sensitivity) and specificity == pytest.approx(0.5)
    with pytest.raises(ValueError, match="target_sensitivity"):
        m.referral_threshold_for_sensitivity(S, M, 0.0)


def test_malignancy_score_uses_the_taxonomy():
    # akiec counts as malignant (taxonomy.py), nv and bkl do not
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(m.malignancy_score(p, ["mel", "nv", "akiec", "bkl"]), [0.4, 0.5])
    with pytest.raises(ValueError, match="unknown diagnosis"):
        m.malignancy_score(p, ["mel", "nv", "akiec", "mole"])


# --- calibration ------------------------------------------------------------------------------------

Y_CAL = np.array([0, 1, 0, 1])
P_CAL = np.array([[0.9, 0.1], [0.9, 0.1], [0.95, 0.05], [0.45, 0.55]])


def test_expected_calibration_error_by_hand():
    # 15 bins of width 1/15. conf 0.9, 0.9 -> bin (13/15, 14/15]: accuracy 1/2, confidence 0.9, gap 0.4
    # conf 0.95 -> bin (14/15, 1]: right, gap 0.05; conf 0.55 -> bin (8/15, 9/15]: right, gap 0.45
    # ECE = 2/4 x 0.4 + 1/4 x 0.05 + 1/4 x 0.45 = 0.325
    assert m.expected_calibration_error(Y_CAL, P_CAL) == pytest.approx(0.325)
    # one bin: accuracy 3/4, mean confidence (0.9 + 0.9 + 0.95 + 0.55) / 4 = 0.825 -> 0.075
    assert m.expected_calibration_error(Y_CAL, P_CAL, n_bins=1) == pytest.approx(0.075)


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy():
    y = np.array([0, 0, 0, 1])
    p = np.tile([0.75, 0.25], (4, 1))  # 75% confident, right 3 times out of 4
    assert m.expected_calibration_error(y, p) == pytest.approx(0.0)


def test_brier_score_by_hand():
    # (0.1^2 + 0.1^2) + (0.9^2 + 0.9^2) + (0.05^2 + 0.05^2) + (0.45^2 + 0.45^2) = 0.02 + 1.62 + 0.005 + 0.405
    assert m.brier_score(Y_CAL, P_CAL) == pytest.approx(2.05 / 4)
    assert m.brier_score([0, 1], np.eye(2)) == 0.0
    assert m.brier_score([1, 0], np.eye(2)) == 2.0


# --- bootstrap --------------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    first = m.bootstrap_ci(m.balanced_accuracy, y, p, n_resamples=200, seed=7)
    assert first == m.bootstrap_ci(m.balanced_accuracy, y, p, n_resamples=200, seed=7)
    assert first != m.bootstrap_ci(m.balanced_accuracy, y, p, n_resamples=200, seed=8)
    assert first.estimate == m.balanced_accuracy(y, p)
    assert first.low <= first.estimate <= first.high


def test_bootstrap_keeps_every_class_with_its_count():
    y = np.array([0] * 10 + [1] * 3 + [2] * 1)  # class 2 has a single example
    p = np.full((14, 3), 1 / 3)
    seen = []

    def counts(y_sample, p_sample):
        seen.append(np.bincount(y_sample, minlength=3).tolist())
        return 0.0

    m.bootstrap_ci(counts, y, p, n_resamples=50)
    assert seen == [[10, 3, 1]] * 51  # 50 resamples and the full-data estimate


def test_bootstrap_of_a_constant_metric_is_a_point():
    # every row of a class has the same prediction, so every stratified resample scores the same:
    # recall 1 for class 0, 0 for class 1 -> balanced accuracy 1/2
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([[0.9, 0.1]] * 3 + [[0.6, 0.4]] * 2)
    assert m.bootstrap_ci(m.balanced_accuracy, y, p, n_resamples=100) == (0.5, 0.5, 0.5)


def test_bootstrap_width_is_plausible_for_accuracy():
    # 400 rows, about 70% right: a 95% interval is roughly +-1.96 sqrt(0.21 / 400) = +-0.045
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    right = rng.random(400) < 0.7
    predicted = np.where(right, y, (y + 1) % 4)
    p = np.full((400, 4), 0.1)
    p[np.arange(400), predicted] = 0.7
    ci = m.bootstrap_ci(m.accuracy, y, p, n_resamples=500, alpha=0.05)
    assert 0.06 < ci.high - ci.low < 0.12


def test_bootstrap_passes_weights_and_drops_weight_zero_rows():
    weights = np.array([1, 1, 1, 1, 1, 1, 0])
    received = []

    def weighted(y_sample, p_sample, *, weights):
        received.append(weights)
        return m.balanced_accuracy(y_sample, p_sample, weights)

    ci = m.bootstrap_ci(weighted, Y, P, weights=weights, n_resamples=20)
    assert all(len(w) == 6 and (w > 0).all() for w in received)
    assert ci.estimate == pytest.approx(5 / 6)


# --- agreement with the official ISIC scorer ---------------------------------------------------------

ISIC2018_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
# the ISIC 2018 task 3 test set has 1512 images: 171 MEL, 908 NV, 93 BCC, 43 AKIEC, 217 BKL, 44 DF, 35 VASC
ISIC2018_COUNTS = [34, 181, 19, 9, 43, 8, 6]  # the same mix, scaled to 300


def isic2018_csvs() -> tuple[str, str]:
    """Truth and prediction CSVs in the scorer's format, with ISIC_0035068 (score weight 0 in the real test set)."""
    rng = np.random.default_rng(2018)
    y = np.repeat(np.arange(7), ISIC2018_COUNTS)
    rng.shuffle(y)
    images = [f"ISIC_{34918 + i:07d}" for i in range(len(y))]  # ISIC_0035068 is row 150
    zero = images.index("ISIC_0035068")
    y[zero] = ISIC2018_CLASSES.index("VASC")  # a rare class, predicted wrong below: the weight changes the score
    logits = rng.normal(0, 1, (len(y), 7)) + np.log(np.array(ISIC2018_COUNTS) / 300)
    logits[np.arange(len(y)), y] += rng.normal(1.8, 1.0, len(y))  # a decent but imperfect model
    logits[zero] = [5, 0, 0, 0, 0, 0, -5]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = pd.DataFrame(np.eye(7)[y], columns=ISIC2018_CLASSES)
    truth.insert(0, "image", images)
    truth["score_weight"] = 1.0
    truth["validation_weight"] = 1.0
    truth.loc[zero, ["score_weight", "validation_weight"]] = 0.0
    prediction = pd.DataFrame(np.round(probabilities, 4), columns=ISIC2018_CLASSES)  # rounded, as submissions are
    prediction.insert(0, "image", [f"{name}.jpg" for name in images])
    return truth.to_csv(index=False), prediction.to_csv(index=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:isic_challenge_scoring")  # its pandas 3 deprecations
def test_agrees_with_the_official_isic_scorer():
    truth_csv, prediction_csv = isic2018_csvs()
    truth_probabilities, truth_weights = parse_truth_csv(io.StringIO(truth_csv))  # the scorer's own parser
    # The scorer's prediction parser (load_csv.parse_csv) calls DataFrame.applymap, which pandas 3 removed,
    # so ClassificationScore.from_stream fails here; this does what it does after parsing: strip ".jpg",
    # index by image, put the columns in truth order, sort both by image, then construct the score.
    prediction = pd.read_csv(io.StringIO(prediction_csv))
    prediction["image"] = prediction["image"].str.replace(r"\.jpg$", "", regex=True)
    prediction_probabilities = prediction.set_index("image")[truth_probabilities.columns].sort_index()
    truth_probabilities, truth_weights = truth_probabilities.sort_index(), truth_weights.sort_index()
    score = ClassificationScore(
        truth_probabilities, prediction_probabilities, truth_weights, ClassificationMetric.BALANCED_ACCURACY
    )

    y = truth_probabilities.to_numpy().argmax(axis=1)
    p = prediction_probabilities.to_numpy()
    w = truth_weights["score_weight"].to_numpy()
    assert (w == 0).sum() == 1
    # the scorer calls a row with a tied maximum "undecided"; there are none, so arg-max is comparable
    assert not ((p == p.max(axis=1, keepdims=True)).sum(axis=1) > 1).any()

    ours = m.balanced_accuracy(y, p, w)
    assert ours == pytest.approx(score.overall, abs=1e-6)
    assert ours == pytest.approx(score.aggregate["balanced_accuracy"], abs=1e-6)
    assert abs(m.balanced_accuracy(y, p) - ours) > 1e-3  # the weight-0 row matters, so the weighting was tested
    table = m.per_class_metrics(y, p, w, class_names=ISIC2018_CLASSES)
    for column in ("auc", "auc_sens_80", "ap"):
        np.testing.assert_allclose(table[column], score.per_category.loc[ISIC2018_CLASSES, column], atol=1e-6)
    assert m.macro_auc(y, p, w) == pytest.approx(score.macro_average["auc"], abs=1e-6)
    assert 0.4 < ours < 0.9  # a realistic, imperfect model


def test_malignant_columns_follow_the_taxonomy() -> None:
    assert m.malignant_columns(["mel", "nv", "akiec", "bkl", "mcc"]).tolist() == [True, False, True, False, True]
    with pytest.raises(ValueError, match="unknown diagnosis codes"):
        m.malignant_columns(["mel", "mole"])


def test_confidence_bins_are_right_closed_and_equal_width() -> None:
    # 3 bins: (0, 1/3], (1/3, 2/3], (2/3, 1]; a confidence on an edge belongs to the bin below it.
    bins, edges = m.confidence_bins(np.array([0.2, 1 / 3, 0.34, 2 / 3, 0.9, 1.0]), 3)
    assert bins.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(edges, [0, 1 / 3, 2 / 3, 1])


@pytest.mark.parametrize(("target", "expected"), [(1.0, 0.8), (0.8, 0.6), (5 / 6, 0.6), (0.5, 0.3)])
def test_referral_threshold_for_specificity(target, expected):
    # benign scores 0.7, 0.5, 0.4, 0.2, 0.1, 0.05: spec 1 needs t > 0.7, the smallest observed such t is 0.8;
    # spec 5/6 lets the 0.7 through, t > 0.5 -> 0.6; spec 3/6 lets 0.7, 0.5, 0.4 through, t > 0.2 -> 0.3
    threshold = m.referral_threshold_for_specificity(S, M, target)
    assert threshold == pytest.approx(expected)
    assert m.sensitivity_specificity_at_threshold(S, M, threshold)[1] >= target - 1e-12
    smaller = S[np.less(S, threshold)]
    if len(smaller):  # the smallest such threshold: the next lower score breaks the target
        assert m.sensitivity_specificity_at_threshold(S, M, smaller.max())[1] < target


def test_referral_threshold_for_specificity_needs_benign_rows():
    with pytest.raises(ValueError, match="no benign rows"):
        m.referral_threshold_for_specificity([0.2, 0.9], [True, True], 0.9)
