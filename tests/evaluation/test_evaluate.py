"""The pure functions of ``evaluation.evaluate`` on tiny hand-built inputs whose answers are worked out by hand.

In the style of isic-challenge-scoring's tests: a handful of rows, every expected number derived in a
comment, so that a change in a metric's definition (or in which rows it sees) shows up as a wrong number.
No model is trained or loaded: an :class:`EvaluationResult` is built by hand from a frame and probabilities.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skintriage import DISCLAIMER
from skintriage.evaluation import evaluate
from skintriage.evaluation.result import EvaluationResult
from skintriage.triage.acquisition import AcquisitionClassifier
from skintriage.triage.calibration import AcquisitionCalibration

# --- source_label_space ---------------------------------------------------------------------------------


def sources(*names: str) -> pd.DataFrame:
    return pd.DataFrame({"source": list(names)})


def test_label_space_is_the_diagnoses_the_source_can_be_labelled_with() -> None:
    # PH2's map gives only nv and mel: of [mel, bcc, nv, bkl, vasc], columns 0 and 2
    assert evaluate.source_label_space(sources("ph2", "ph2"), ["mel", "bcc", "nv", "bkl", "vasc"]) == [0, 2]


def test_label_space_of_several_sources_is_the_union_of_their_maps() -> None:
    # PH2 (mel, nv) + the ISIC 2018 map (akiec bcc bkl df mel nv vasc): everything but scc and other_benign
    classes = ["mel", "scc", "bcc", "nv", "other_benign", "vasc"]
    assert evaluate.source_label_space(sources("ph2", "isic2018_test"), classes) == [0, 2, 3, 5]


def test_label_space_of_an_unknown_source_is_every_class() -> None:
    classes = ["mel", "nv", "vasc"]
    assert evaluate.source_label_space(sources("ph2", "no_such_source"), classes) == [0, 1, 2]


def test_label_space_that_would_be_empty_is_every_class() -> None:
    # PH2 can produce neither scc nor other_benign: an empty space would score nothing, so all columns are kept
    assert evaluate.source_label_space(sources("ph2"), ["scc", "other_benign"]) == [0, 1]


# --- multiclass_block -----------------------------------------------------------------------------------

# Three classes, six rows; the last has weight 0 and is confidently wrong, so that it shows if it leaks in.
# Confidences avoid the 15-bin ECE edges (multiples of 1/15) so that the bin of each row is unambiguous.
Y3 = np.array([0, 0, 1, 1, 2, 0])
P3 = np.array(
    [
        [0.90, 0.05, 0.05],  # class 0, called 0: right, confidence 0.90 (bin 13: (13/15, 14/15])
        [0.30, 0.50, 0.20],  # class 0, called 1: wrong, confidence 0.50 (bin 7)
        [0.20, 0.70, 0.10],  # class 1, called 1: right, confidence 0.70 (bin 10)
        [0.15, 0.30, 0.55],  # class 1, called 2: wrong, confidence 0.55 (bin 8)
        [0.05, 0.05, 0.90],  # class 2, called 2: right, confidence 0.90 (bin 13)
        [0.00, 0.00, 1.00],  # weight 0
    ]
)
W3 = np.array([1.0, 1, 1, 1, 1, 0])


def test_multiclass_block_by_hand() -> None:
    block = evaluate.multiclass_block(Y3, P3, W3)

    assert block["n_images"] == 5  # the weight-0 row is not counted
    assert block["accuracy"] == pytest.approx(3 / 5)  # rows 0, 2, 4 right
    # recall: class 0 1/2 (rows 0, 1), class 1 1/2 (rows 2, 3), class 2 1/1 (row 4)
    assert block["balanced_accuracy"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # ECE, weight share x |accuracy - confidence| per bin:
    # bin 13 (rows 0, 4): 2/5 * |1 - 0.90| = 0.04; bin 7 (row 1): 1/5 * 0.50 = 0.10;
    # bin 10 (row 2): 1/5 * |1 - 0.70| = 0.06; bin 8 (row 3): 1/5 * 0.55 = 0.11
    assert block["ece"] == pytest.approx(0.04 + 0.10 + 0.06 + 0.11)
    # Brier, squared distance to the one-hot truth summed over classes:
    # 0.1^2+0.05^2+0.05^2 = 0.015 | 0.7^2+0.5^2+0.2^2 = 0.78 | 0.2^2+0.3^2+0.1^2 = 0.14 |
    # 0.15^2+0.7^2+0.55^2 = 0.815 | 0.05^2+0.05^2+0.1^2 = 0.015; mean over 5 rows
    assert block["brier"] == pytest.approx((0.015 + 0.78 + 0.14 + 0.815 + 0.015) / 5)
    # one-vs-rest AUC: class 0 positives 0.90, 0.30 above every negative (0.20 0.15 0.05): 1;
    # class 1 positives 0.70 (beats 3 of 3) and 0.30 (beats 0.05, 0.05, not 0.50): 5/6; class 2: 1
    assert block["macro_auc"] == pytest.approx((1 + 5 / 6 + 1) / 3)


def test_multiclass_block_calls_classes_from_the_decisions_but_scores_the_probabilities() -> None:
    decisions = P3.copy()
    decisions[1] = [0.6, 0.3, 0.1]  # a class-balanced call that turns row 1 into a right one

    block = evaluate.multiclass_block(Y3, P3, W3, decisions)
    plain = evaluate.multiclass_block(Y3, P3, W3)

    assert block["accuracy"] == pytest.approx(4 / 5)
    assert block["balanced_accuracy"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    for key in ("ece", "brier", "macro_auc"):  # of the probabilities: unchanged
        assert block[key] == pytest.approx(plain[key])


def test_multiclass_block_averages_over_the_classes_present_only() -> None:
    # class 1 is absent from the truth (its only row has weight 0), so both averages are over classes 0 and 2
    labels = np.array([0, 0, 2, 2, 1])
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1],  # class 0, right
            [0.2, 0.5, 0.3],  # class 0, called 1
            [0.1, 0.2, 0.7],  # class 2, right
            [0.3, 0.3, 0.4],  # class 2, right
            [0.1, 0.8, 0.1],  # class 1, weight 0
        ]
    )
    weights = np.array([1.0, 1, 1, 1, 0])

    block = evaluate.multiclass_block(labels, probabilities, weights)

    assert block["accuracy"] == pytest.approx(3 / 4)
    assert block["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)  # not (1/2 + 0 + 1) / 3
    # class 0: positives 0.7 (beats 0.1, 0.3), 0.2 (beats 0.1 only): 3/4; class 2: 0.7, 0.4 beat 0.1, 0.3: 1
    assert block["macro_auc"] == pytest.approx((3 / 4 + 1) / 2)


def test_multiclass_block_with_one_class_present_has_no_macro_auc() -> None:
    block = evaluate.multiclass_block(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), np.ones(2))
    assert "macro_auc" not in block
    assert block["accuracy"] == block["balanced_accuracy"] == pytest.approx(1 / 2)


# --- referral_block -------------------------------------------------------------------------------------

SCORE = np.array([0.90, 0.40, 0.60, 0.20, 0.10, 0.95])
MALIGNANT = np.array([True, True, False, False, False, False])
WEIGHTS = np.array([1.0, 1, 1, 1, 1, 0])  # the last (benign, 0.95) would cost specificity if it were scored


def test_referral_block_by_hand() -> None:
    block = evaluate.referral_block(SCORE, MALIGNANT, WEIGHTS, 0.5)

    assert block["n_malignant"] == 2 and block["n_benign"] == 3  # the weight-0 row is dropped
    assert block["threshold"] == 0.5
    assert block["sensitivity"] == pytest.approx(1 / 2)  # 0.90 referred, 0.40 missed
    assert block["specificity"] == pytest.approx(2 / 3)  # 0.20, 0.10 kept back, 0.60 referred (0.95 not scored)
    assert block["referred_fraction"] == pytest.approx(2 / 5)  # 0.90 and 0.60 of 5 scored rows
    # malignant 0.90 beats all 3 benign, 0.40 beats 0.20 and 0.10: 5 of 6 pairs
    assert block["auc"] == pytest.approx(5 / 6)
    # operating points (sens, spec): (0.5, 1) at 0.90, (0.5, 2/3) at 0.60, (1, 2/3) at 0.40, (1, 1/3), (1, 0)
    assert block["sensitivity_at_specificity_0.70"] == pytest.approx(1 / 2)
    assert block["specificity_at_sensitivity_0.95"] == pytest.approx(2 / 3)


def test_referral_block_counts_a_score_at_the_threshold_as_referred() -> None:
    block = evaluate.referral_block(SCORE, MALIGNANT, WEIGHTS, 0.4)
    assert block["sensitivity"] == pytest.approx(1.0)
    assert block["referred_fraction"] == pytest.approx(3 / 5)


def test_referral_block_without_a_threshold_has_only_the_threshold_free_numbers() -> None:
    block = evaluate.referral_block(SCORE, MALIGNANT, WEIGHTS, None)
    assert not {"threshold", "sensitivity", "specificity", "referred_fraction"} & set(block)
    assert block["auc"] == pytest.approx(5 / 6)


def test_referral_block_with_one_side_only_has_no_auc() -> None:
    benign = np.zeros(3, dtype=bool)
    block = evaluate.referral_block(np.array([0.1, 0.6, 0.3]), benign, np.ones(3), 0.5)
    assert block["n_malignant"] == 0 and block["n_benign"] == 3
    assert math.isnan(block["sensitivity"]) and block["specificity"] == pytest.approx(2 / 3)
    assert not {"auc", "sensitivity_at_specificity_0.70", "specificity_at_sensitivity_0.95"} & set(block)


# --- confidence_intervals -------------------------------------------------------------------------------

RESAMPLES = 10  # the intervals' width does not matter here, only which rows and keys they have: keep it fast


@pytest.fixture
def few_resamples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate, "BOOTSTRAP_RESAMPLES", RESAMPLES)


def bootstrap_inputs(n: int = 30) -> tuple[np.ndarray, ...]:
    """A 3-class set with a model better than chance, and a malignancy score that ranks right more often than not."""
    rng = np.random.default_rng(3)
    labels = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    malignant = labels == 0
    score = np.clip(0.2 * malignant + rng.uniform(0, 0.7, size=n), 0, 1)
    return labels, probabilities, score, malignant


def intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    score: np.ndarray,
    malignant: np.ndarray,
    weights: np.ndarray,
    threshold: float | None = 0.5,
) -> dict:
    """confidence_intervals with the class call = the probabilities and one weight for both views."""
    return evaluate.confidence_intervals(
        labels, probabilities, probabilities, score, malignant, weights, weights, threshold
    )


@pytest.fixture(scope="module")
def toy_intervals() -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "BOOTSTRAP_RESAMPLES", RESAMPLES)
        labels, probabilities, score, malignant = bootstrap_inputs()
        return intervals(labels, probabilities, score, malignant, np.ones(len(labels)))


def test_confidence_intervals_are_deterministic(toy_intervals, few_resamples) -> None:
    labels, probabilities, score, malignant = bootstrap_inputs()
    assert intervals(labels, probabilities, score, malignant, np.ones(len(labels))) == toy_intervals  # seed 0


def test_confidence_intervals_bracket_the_point_estimates(toy_intervals) -> None:
    labels, probabilities, score, malignant = bootstrap_inputs()
    weights = np.ones(len(labels))
    point = evaluate.multiclass_block(labels, probabilities, weights)
    referral = evaluate.referral_block(score, malignant, weights, 0.5)
    expected = {
        "accuracy": point["accuracy"],
        "balanced_accuracy": point["balanced_accuracy"],
        "ece": point["ece"],
        "macro_auc": point["macro_auc"],
        "referral_auc": referral["auc"],
        "referral_sensitivity": referral["sensitivity"],
        "referral_specificity": referral["specificity"],
    }
    assert set(toy_intervals) == set(expected)
    for key, value in expected.items():
        low, high = toy_intervals[key]
        assert low <= value <= high, (key, low, value, high)
        assert low < high, key  # 30 rows: a real interval, not a point


def test_confidence_intervals_leave_weight_zero_rows_out(toy_intervals, few_resamples) -> None:
    labels, probabilities, score, malignant = bootstrap_inputs()
    # a confidently wrong, malignant-scored benign row with weight 0 (in both views) changes nothing
    with_row = intervals(
        np.r_[labels, 1],
        np.vstack([probabilities, [0.98, 0.01, 0.01]]),
        np.r_[score, 1.0],
        np.r_[malignant, False],
        np.r_[np.ones(len(labels)), 0.0],
    )
    assert with_row == toy_intervals


def test_confidence_intervals_without_a_threshold_or_a_second_class(few_resamples) -> None:
    labels, probabilities, score, malignant = bootstrap_inputs()
    no_threshold = intervals(labels, probabilities, score, malignant, np.ones(len(labels)), threshold=None)
    assert set(no_threshold) == {"accuracy", "balanced_accuracy", "ece", "macro_auc", "referral_auc"}
    # only class 0 in the label space, and every scored row malignant: no AUC of either kind
    only = intervals(labels, probabilities, score, malignant, (labels == 0).astype(float))
    assert set(only) == {"accuracy", "balanced_accuracy", "ece"}


# --- an EvaluationResult by hand ------------------------------------------------------------------------

CLASSES = ["mel", "nv", "vasc"]  # vasc: a model class PH2's label map cannot produce
# Six ISIC-style rows from PH2. Row 4 has score_weight 0; row 5 is a Merkel cell carcinoma, a diagnosis the
# model has no output for (label -1): out of the multiclass metrics, in the referral ones (malignant).
ROWS = [
    # image_id, acquisition, diagnosis, triage_group, score_weight, label, probabilities (mel, nv, vasc)
    ("IMG_0", "dermoscopic", "mel", "other_malignant", 1.0, 0, (0.70, 0.20, 0.10)),
    ("IMG_1", "dermoscopic", "nv", "benign", 1.0, 1, (0.20, 0.60, 0.20)),
    ("IMG_2", "clinical", "nv", "benign", 1.0, 1, (0.12, 0.28, 0.60)),
    ("IMG_3", "clinical", "mel", "other_malignant", 1.0, 0, (0.30, 0.50, 0.20)),
    ("IMG_4", "dermoscopic", "nv", "benign", 0.0, 1, (0.90, 0.05, 0.05)),
    ("IMG_5", "clinical", "mcc", "mcc", 1.0, evaluate.UNKNOWN, (0.50, 0.40, 0.10)),
]
THRESHOLD = 0.4


def hand_result(*, decision_prior: np.ndarray | None = None, threshold: float | None = THRESHOLD) -> EvaluationResult:
    frame = pd.DataFrame(
        [row[:5] for row in ROWS], columns=["image_id", "acquisition", "diagnosis", "triage_group", "score_weight"]
    )
    frame.insert(1, "source", "ph2")
    probabilities = np.array([row[6] for row in ROWS])
    labels = np.array([row[5] for row in ROWS])
    return EvaluationResult(
        name="hand_test",
        class_names=CLASSES,
        frame=frame,
        logits=np.log(probabilities),
        labels=labels,
        probabilities=probabilities,
        label_space=evaluate.source_label_space(frame, CLASSES),
        referral_threshold=threshold,
        n_excluded=int((labels == evaluate.UNKNOWN).sum()),
        metrics={},
        decision_prior=decision_prior,
    )


def test_evaluation_metrics_of_a_hand_built_result() -> None:
    result = hand_result()
    assert result.label_space == [0, 1]

    m = evaluate.evaluation_metrics(result, model="hand_model", calibrated=True, bootstrap=False)

    assert m["dataset"] == "hand_test" and m["model"] == "hand_model" and m["calibrated"] is True
    assert m["disclaimer"] == DISCLAIMER
    assert m["label_space"] == ["mel", "nv"] and m["n_excluded"] == 1 and m["class_call"] == "arg-max"
    # restricted to (mel, nv) and renormalised: IMG_0 (7/9, 2/9) mel right; IMG_1 (1/4, 3/4) nv right;
    # IMG_2 (0.3, 0.7) nv right, although vasc is its largest full-output probability; IMG_3 (3/8, 5/8) nv, wrong
    assert m["n_images"] == 4
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["confusion_matrix"] == {"classes": ["mel", "nv"], "counts": [[1.0, 1.0], [0.0, 2.0]]}
    assert m["per_class"]["mel"]["support"] == 2 and m["per_class"]["mel"]["sensitivity"] == pytest.approx(1 / 2)
    assert m["per_class"]["nv"]["ppv"] == pytest.approx(2 / 3)  # three nv calls, two of them nv
    # malignant classes' mass (mel only): 0.70 0.20 0.12 0.30 [0.90, weight 0] 0.50; malignant IMG_0, IMG_3, IMG_5
    referral = m["referral"]
    assert (referral["n_malignant"], referral["n_benign"]) == (3, 2)
    assert referral["sensitivity"] == pytest.approx(2 / 3)  # 0.70 and 0.50 referred at 0.4, 0.30 missed
    assert referral["specificity"] == pytest.approx(1.0)  # 0.20 and 0.12 kept back
    assert referral["referred_fraction"] == pytest.approx(2 / 5)
    assert referral["auc"] == pytest.approx(1.0)  # every malignant score above every benign one
    assert "ci95" not in m and "by_source" not in m  # one source: no breakdown
    assert "acquisition_accuracy" not in m and "referral_per_acquisition" not in m  # no classifier
    json.dumps(m, allow_nan=False)  # strict JSON as it stands


def test_evaluation_metrics_break_down_by_acquisition() -> None:
    by = evaluate.evaluation_metrics(hand_result(), model="m", calibrated=True, bootstrap=False)["by_acquisition"]

    assert set(by) == {"clinical", "dermoscopic"}
    dermoscopic, clinical = by["dermoscopic"], by["clinical"]
    # dermoscopic: IMG_0 (mel, right) and IMG_1 (nv, right) scored, IMG_4 (weight 0) not
    assert dermoscopic["n_images"] == 2 and dermoscopic["accuracy"] == pytest.approx(1.0)
    assert (dermoscopic["referral"]["n_malignant"], dermoscopic["referral"]["n_benign"]) == (1, 1)
    # clinical: IMG_2 (nv, right), IMG_3 (mel, wrong) scored; the MCC row only in the referral
    assert clinical["n_images"] == 2 and clinical["balanced_accuracy"] == pytest.approx(1 / 2)
    assert (clinical["referral"]["n_malignant"], clinical["referral"]["n_benign"]) == (2, 1)
    assert clinical["referral"]["sensitivity"] == pytest.approx(1 / 2)  # IMG_5 0.50 referred, IMG_3 0.30 not


def test_evaluation_metrics_with_a_class_balanced_call() -> None:
    # p / prior with prior (1/4, 1/2, 1/4): IMG_3 (0.30, 0.50, 0.20) -> (1.2, 1.0, 0.8): mel, now right;
    # IMG_1 (0.8, 1.2, 0.8) and IMG_2 (0.48, 0.56, 2.4 -> restricted 0.48, 0.56) stay nv, IMG_0 stays mel
    prior = np.array([0.25, 0.5, 0.25])

    m = evaluate.evaluation_metrics(hand_result(decision_prior=prior), model="m", calibrated=True, bootstrap=False)
    plain = evaluate.evaluation_metrics(hand_result(), model="m", calibrated=True, bootstrap=False)

    assert m["class_call"] == "arg-max of class-balanced probabilities"
    assert m["accuracy"] == pytest.approx(1.0) and m["balanced_accuracy"] == pytest.approx(1.0)
    assert m["confusion_matrix"]["counts"] == [[2.0, 0.0], [0.0, 2.0]]
    assert m["ece"] == pytest.approx(plain["ece"]) and m["brier"] == pytest.approx(plain["brier"])
    assert m["referral"] == plain["referral"]  # the referral never uses the class call


def test_evaluation_metrics_with_bootstrap_has_intervals(few_resamples) -> None:
    m = evaluate.evaluation_metrics(hand_result(), model="m", calibrated=True, bootstrap=True)
    assert set(m["ci95"]) >= {"accuracy", "balanced_accuracy", "ece", "macro_auc", "referral_auc"}
    for low, high in m["ci95"].values():
        assert low <= high


# --- referral_per_acquisition ---------------------------------------------------------------------------

# A one-dimensional "embedding": +3 reads dermoscopic (sigmoid(3) = 0.95), -3 clinical.
CLASSIFIER = AcquisitionClassifier(
    classes=("clinical", "dermoscopic"), mean=np.zeros(1), scale=np.ones(1), coef=np.ones(1), intercept=0.0
)
CALIBRATIONS = {
    "dermoscopic": AcquisitionCalibration(
        temperature=1.0, referral_threshold=0.5, target_sensitivity=0.95, validation={}, urgent={"threshold": 0.75}
    ),
    "clinical": AcquisitionCalibration(
        temperature=2.0, referral_threshold=0.3, target_sensitivity=0.95, validation={}, urgent={"threshold": 0.6}
    ),
}
LN4, LN9 = math.log(4), math.log(9)
# Two classes (mel, nv), logits (a, 0): p(mel) = sigmoid(a / T). At T = 1: ln 4 -> 0.8, -ln 4 -> 0.2, 0 -> 0.5;
# at T = 2: -ln 4 -> 1/3, ln 9 -> 0.75.
PER_TYPE_ROWS = [
    # recorded acquisition, embedding, mel logit, malignant, score_weight
    ("dermoscopic", 3.0, LN4, True, 1.0),  # read dermoscopic: 0.8 >= 0.5 referred, >= 0.75 urgent
    ("dermoscopic", 3.0, -LN4, False, 1.0),  # read dermoscopic: 0.2, neither
    ("clinical", -3.0, -LN4, False, 1.0),  # read clinical (T 2): 1/3 >= 0.3 referred, not urgent
    ("clinical", -3.0, LN9, True, 1.0),  # read clinical: 0.75 referred, >= 0.6 urgent
    ("clinical", 3.0, 0.0, True, 1.0),  # misread as dermoscopic: exactly 0.5 at 0.5, referred, not urgent
    ("dermoscopic", -3.0, LN9, False, 0.0),  # weight 0: would be a referred benign
]


def per_type_result() -> EvaluationResult:
    frame = pd.DataFrame(
        {
            "image_id": [f"IMG_{i}" for i in range(len(PER_TYPE_ROWS))],
            "source": "isic2018_test",
            "acquisition": [row[0] for row in PER_TYPE_ROWS],
            "diagnosis": ["mel" if row[3] else "nv" for row in PER_TYPE_ROWS],
            "triage_group": ["other_malignant" if row[3] else "benign" for row in PER_TYPE_ROWS],
            "score_weight": [row[4] for row in PER_TYPE_ROWS],
        }
    )
    logits = np.array([[row[2], 0.0] for row in PER_TYPE_ROWS])
    labels = np.array([0 if row[3] else 1 for row in PER_TYPE_ROWS])
    return EvaluationResult(
        name="per_type",
        class_names=["mel", "nv"],
        frame=frame,
        logits=logits,
        labels=labels,
        probabilities=np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True),
        label_space=[0, 1],
        referral_threshold=0.5,
        n_excluded=0,
        metrics={},
        embeddings=np.array([[row[1]] for row in PER_TYPE_ROWS]),
    )


def test_referral_per_acquisition_uses_each_images_type_by_hand() -> None:
    deployed = evaluate.referral_per_acquisition(per_type_result(), CLASSIFIER, CALIBRATIONS)

    assert deployed["method"].startswith("each image at the temperature and thresholds")
    # all scored rows (the first five): malignant 0, 3, 4 all referred; benign 1 kept back, 2 referred
    assert deployed["all"] == pytest.approx(
        {"n_malignant": 3, "n_benign": 2, "sensitivity": 1.0, "specificity": 1 / 2,
         "referred_fraction": 4 / 5, "urgent_fraction": 2 / 5, "ece": (0.2 + 0.2 + 1 / 3 + 0.25 + 0.5) / 5}
    )  # fmt: skip
    # ECE at each row's deployed temperature: every class call is right (the 0.5 tie goes to mel, the first
    # class), so whatever the bins, ECE is the mean of 1 - confidence: 0.2 0.2 1/3 0.25 0.5 over the five rows
    # by the *recorded* type (the classifier's reading chooses the thresholds, the record groups the rows)
    assert deployed["by_acquisition"]["dermoscopic"] == pytest.approx(
        {"n_malignant": 1, "n_benign": 1, "sensitivity": 1.0, "specificity": 1.0,
         "referred_fraction": 1 / 2, "urgent_fraction": 1 / 2, "ece": (0.2 + 0.2) / 2}
    )  # fmt: skip
    assert deployed["by_acquisition"]["clinical"] == pytest.approx(
        {"n_malignant": 2, "n_benign": 1, "sensitivity": 1.0, "specificity": 0.0,
         "referred_fraction": 1.0, "urgent_fraction": 1 / 3, "ece": (1 / 3 + 0.25 + 0.5) / 3}
    )  # fmt: skip


def test_referral_per_acquisition_of_a_type_with_no_scored_rows_is_empty() -> None:
    result = per_type_result()
    result.frame.loc[5, "acquisition"] = None  # the weight-0 row alone is of no recorded type
    deployed = evaluate.referral_per_acquisition(result, CLASSIFIER, CALIBRATIONS)
    assert deployed["by_acquisition"]["unknown"] == {"n_malignant": 0, "n_benign": 0}


def test_evaluation_metrics_carry_the_per_acquisition_referral() -> None:
    result = per_type_result()
    result.referral_per_acquisition = evaluate.referral_per_acquisition(result, CLASSIFIER, CALIBRATIONS)
    m = evaluate.evaluation_metrics(result, model="m", calibrated=True, bootstrap=False)
    assert m["referral_per_acquisition"] == result.referral_per_acquisition
    # the headline referral is the pooled one: p(mel) at T 1 (0.8 0.2 0.2 0.9 0.5) against 0.5
    assert m["referral"]["sensitivity"] == pytest.approx(1.0) and m["referral"]["specificity"] == pytest.approx(1.0)


# --- json_safe ------------------------------------------------------------------------------------------


def test_json_safe_makes_strict_json() -> None:
    value = {
        "nan": float("nan"),
        "inf": float("inf"),
        "numpy": np.float32(0.5),
        "nested": [np.int64(3), (np.float64("-inf"), np.float64(0.25)), {"deep": np.float64("nan")}],
        7: {"flag": np.bool_(True), "text": "a", "none": None},
    }

    safe = evaluate.json_safe(value)

    assert safe == {
        "nan": None,
        "inf": None,
        "numpy": 0.5,
        "nested": [3, [None, 0.25], {"deep": None}],
        "7": {"flag": True, "text": "a", "none": None},
    }
    assert type(safe["numpy"]) is float and type(safe["nested"][0]) is int and type(safe["7"]["flag"]) is bool
    json.dumps(safe, allow_nan=False)


# --- predictions_frame and write_evaluation -------------------------------------------------------------


def test_predictions_frame_columns_rounding_and_referral() -> None:
    result = hand_result()
    result.probabilities = result.probabilities.copy()
    result.probabilities[0] = [1 / 3, 1 / 3, 1 / 3]  # rounds to 0.333333
    result.probabilities[1] = [THRESHOLD, 0.35, 0.25]  # a score exactly at the threshold is referred

    frame = evaluate.predictions_frame(result)

    assert list(frame.columns) == [
        "image_id", "source", "acquisition", "diagnosis", "triage_group", "score_weight",
        "predicted", "p_mel", "p_nv", "p_vasc", "malignancy_score", "referred",
    ]  # fmt: skip
    assert frame["image_id"].tolist() == [row[0] for row in ROWS]
    assert frame.loc[0, "p_mel"] == 0.333333 and frame.loc[0, "malignancy_score"] == 0.333333
    assert frame["predicted"].tolist()[1:] == ["mel", "vasc", "nv", "mel", "mel"]  # arg-max of the full output
    # malignancy score p(mel) 1/3, 0.40, 0.12, 0.30, 0.90, 0.50 against 0.4
    assert frame["referred"].tolist() == [False, True, False, False, True, True]


def test_predictions_frame_without_a_threshold_has_no_referred_column() -> None:
    assert "referred" not in evaluate.predictions_frame(hand_result(threshold=None)).columns


def test_predictions_frame_referred_agrees_with_the_referral_metrics() -> None:
    result = hand_result()
    result.probabilities = result.probabilities.copy()
    result.probabilities[1] = [THRESHOLD - 1e-7, 0.6, 1 - 0.6 - (THRESHOLD - 1e-7)]  # just below 0.4
    score, _, _ = result.referral_view()
    assert not score[1] >= THRESHOLD  # the metrics do not refer it

    assert not evaluate.predictions_frame(result).loc[1, "referred"]


def test_predictions_frame_predicted_is_the_class_call() -> None:
    result = hand_result(decision_prior=np.array([0.25, 0.5, 0.25]))
    # IMG_3 (0.30, 0.50, 0.20) / prior -> (1.2, 1.0, 0.8): the class call is mel (see the class-balanced test)
    assert evaluate.predictions_frame(result).loc[3, "predicted"] == "mel"


def reject_constant(name: str) -> None:
    raise ValueError(f"metrics.json holds {name}, which strict JSON does not allow")


def test_write_evaluation_writes_strict_json_predictions_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from skintriage.evaluation import report  # the report and its plots have their own tests (test_report.py)

    reported = []
    monkeypatch.setattr(report, "write_report", lambda result, out: reported.append((result, out)))
    result = hand_result()
    result.frame.loc[[1, 2], "source"] = "med_node"  # a second source (mel, nv as PH2) with benign images only
    result.metrics = evaluate.evaluation_metrics(result, model="hand_model", calibrated=True, bootstrap=False)

    out = evaluate.write_evaluation(result, tmp_path / "eval")

    assert out == tmp_path / "eval"
    assert {p.name for p in out.iterdir()} == {"metrics.json", "predictions.csv"}
    text = (out / "metrics.json").read_text(encoding="utf-8")
    metrics_json = json.loads(text, parse_constant=reject_constant)
    assert metrics_json == result.metrics and text.endswith("\n")
    assert metrics_json["by_source"]["med_node"]["referral"]["sensitivity"] is None  # NaN: no malignant image
    written = pd.read_csv(out / "predictions.csv")
    expected = evaluate.predictions_frame(result)
    assert written.columns.tolist() == expected.columns.tolist()
    assert written["image_id"].tolist() == expected["image_id"].tolist()
    assert written["referred"].tolist() == expected["referred"].tolist()
    np.testing.assert_allclose(written[["p_mel", "p_nv", "p_vasc"]].to_numpy(), expected[["p_mel", "p_nv", "p_vasc"]])
    assert reported == [(result, out)]
