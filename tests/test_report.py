"""The evaluation report and the model card, on a small hand-built evaluation and a hand-written model.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skintriage import DISCLAIMER, metrics
from skintriage.evaluation import evaluate
from skintriage.evaluation.report import fmt, write_model_card, write_report
from skintriage.triage.calibration import probabilities_at_temperature

CLASSES = ["mel", "bcc", "nv", "bkl", "vasc"]  # vasc: a model class outside the test sources' label maps
TRUE_CLASSES = ["mel", "bcc", "nv", "bkl"]
PLOTS = ("roc.png", "referral_roc.png", "reliability.png", "confusion.png")


def evaluation_frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Two sources of two acquisition types, as evaluate_bundle's rows_frame would hold them."""
    source = np.where(np.arange(n) % 3 == 0, "ph2", "pad_ufes_20")
    diagnosis = rng.choice(TRUE_CLASSES, size=n, p=[0.25, 0.2, 0.35, 0.2])
    frame = pd.DataFrame(
        {
            "image_id": [f"IMG_{i:04d}" for i in range(n)],
            "source": source,
            "acquisition": np.where(source == "ph2", "dermoscopic", "clinical"),
            "diagnosis": diagnosis,
            "triage_group": np.where(np.isin(diagnosis, ["mel", "bcc"]), "other_malignant", "benign"),
            "score_weight": 1.0,
        }
    )
    frame.loc[n - 1, "score_weight"] = 0.0  # predicted but not scored, like ISIC_0035068
    return frame


@pytest.fixture
def result(monkeypatch: pytest.MonkeyPatch) -> evaluate.EvaluationResult:
    monkeypatch.setattr(evaluate, "BOOTSTRAP_RESAMPLES", 50)  # the intervals' values do not matter here
    rng = np.random.default_rng(7)
    frame = evaluation_frame(60, rng)
    labels = np.array([CLASSES.index(d) for d in frame["diagnosis"]])
    logits = rng.normal(size=(len(frame), len(CLASSES))) + 1.5 * np.eye(len(CLASSES))[labels]
    probabilities = probabilities_at_temperature(logits, 1.3)
    space = evaluate.source_label_space(frame, CLASSES)
    assert space == [0, 1, 2, 3]  # vasc is outside PH2's and PAD-UFES-20's label maps: the restriction is real
    score = metrics.malignancy_score(probabilities, CLASSES)
    malignant = frame["triage_group"].eq("other_malignant").to_numpy()
    threshold = metrics.referral_threshold_for_sensitivity(score, malignant, 0.9)
    result = evaluate.EvaluationResult(
        name="toy_test",
        class_names=CLASSES,
        frame=frame,
        logits=logits,
        labels=labels,
        probabilities=probabilities,
        label_space=space,
        referral_threshold=threshold,
        n_excluded=0,
        metrics={},
    )
    result.metrics = evaluate.evaluation_metrics(result, model="toy_model", calibrated=True)
    return result


def test_fmt_gives_three_decimals_and_n_a_for_undefined() -> None:
    assert fmt(0.12345) == "0.123"
    assert fmt(float("nan")) == "n/a"
    assert fmt(None) == "n/a"
    assert fmt(12) == "12"


def test_write_report_writes_plots_and_markdown(result: evaluate.EvaluationResult, tmp_path: Path) -> None:
    path = write_report(result, tmp_path / "eval")

    assert path == tmp_path / "eval" / "report.md"
    for name in PLOTS:
        png = tmp_path / "eval" / name
        assert png.stat().st_size > 1000, name
        with Image.open(png) as image:
            image.verify()
    text = path.read_text(encoding="utf-8")
    assert DISCLAIMER in text
    assert "toy_test" in text
    assert f"{result.metrics['balanced_accuracy']:.3f}" in text
    ci = result.metrics["ci95"]["balanced_accuracy"]
    assert f"[{ci[0]:.3f}, {ci[1]:.3f}]" in text
    for name in PLOTS:
        assert f"]({name})" in text  # embedded with a relative link
    assert "## By acquisition" in text and "dermoscopic" in text and "clinical" in text
    assert "## By source" in text and "pad_ufes_20" in text


def test_write_report_survives_a_set_without_malignant_images(
    result: evaluate.EvaluationResult, tmp_path: Path
) -> None:
    benign = np.isin(result.labels, [CLASSES.index("nv"), CLASSES.index("bkl")])
    frame = result.frame[benign].reset_index(drop=True)
    labels, probabilities = result.labels[benign], result.probabilities[benign]
    weights = frame["score_weight"].to_numpy(dtype=float)
    score = metrics.malignancy_score(probabilities, CLASSES)
    malignant = frame["triage_group"].eq("other_malignant").to_numpy()
    referral = evaluate.referral_block(score, malignant, weights, result.referral_threshold)
    assert np.isnan(referral["sensitivity"])
    subset = evaluate.EvaluationResult(
        name="benign_only", class_names=CLASSES, frame=frame, logits=result.logits[benign], labels=labels,
        probabilities=probabilities, label_space=result.label_space, referral_threshold=result.referral_threshold,
        n_excluded=0, metrics={"dataset": "benign_only", "referral": referral, "ece": 0.1},
    )  # fmt: skip

    text = write_report(subset, tmp_path).read_text(encoding="utf-8")

    assert "| referral sensitivity | n/a |" in text
    assert all((tmp_path / name).stat().st_size > 1000 for name in PLOTS)


def bundle_metadata() -> dict:
    """A model.json as train.finish writes it, with two evaluation sets, trimmed to what a card reads."""
    headline = {
        "n_images": 1511,
        "accuracy": 0.7123,
        "balanced_accuracy": 0.5871,
        "macro_auc": 0.9012,
        "ece": 0.0456,
        "referral": {"n_malignant": 400, "n_benign": 1111, "threshold": 0.2087, "sensitivity": 0.9331,
                     "specificity": 0.6141, "auc": 0.8873},
        "ci95": {"accuracy": [0.6891, 0.7345], "balanced_accuracy": [0.5512, 0.6203],
                 "referral_sensitivity": [0.9075, 0.9550], "referral_auc": [0.8688, 0.9051]},
    }  # fmt: skip
    return {
        "format_version": 1,
        "architecture": {"name": "resnet18", "num_classes": 4, "stem": "standard"},
        "taxonomy_version": "1.0",
        "code_version": "0.1.0+gabc1234",
        "weights_dtype": "float16",
        "name": "benchmark_cpu",
        "classes": ["mel", "bcc", "nv", "bkl"],
        "preprocessing": {
            "input_size": 128,
            "crop_fraction": 1.0,
            "resize": "short side to input_size, centre crop",
            "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "mask_watermark_sources": ["dermnet"],
        },
        "training": {
            "config": {"name": "benchmark_cpu", "sources": [{"name": "ham10000", "root": "ham"}], "epochs": 32},
            "data": {
                "sources": [
                    {"source": "ham10000", "licence": "CC BY-NC 4.0 (non-commercial research, attribution)",
                     "citation": "Tschandl P et al. Sci Data 5, 180161 (2018).", "strategy": "project",
                     "grouped_by": "patient, lesion"},
                    {"source": "dermnet", "licence": "CC BY-NC-ND 3.0 NZ", "citation": "DermNet NZ",
                     "strategy": "project"},
                ],
                "images": {"ham10000/train": 7000, "ham10000/val": 1500, "dermnet/train": 2100},
                "diagnoses_train": {"nv": 5000, "mel": 900, "bkl": 800, "bcc": 400},
                "acquisition": {"dermoscopic": 10015, "clinical": 3000},
            },
            "best_epoch": 27,
        },
        "calibration": {
            "temperature": 1.4321,
            "referral_threshold": 0.2087,
            "target_sensitivity": 0.95,
            "validation": {"n_images": 1500, "ece_before": 0.081, "ece_after": 0.023},
        },
        "metrics": {"validation": headline, "isic2018_test": {**headline, "balanced_accuracy": 0.5432, "ci95": {}}},
        "weights_sha256": "0" * 64,
    }  # fmt: skip


def test_write_model_card(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps(bundle_metadata()), encoding="utf-8")

    path = write_model_card(tmp_path)

    assert path == tmp_path / "MODEL_CARD.md"
    text = path.read_text(encoding="utf-8")
    assert "Merkel cell carcinoma was NOT in the training data" in text
    assert "Cutaneous metastasis was NOT in the training data" in text
    assert "untested" in text
    assert "melanoma, basal cell carcinoma" in text  # what the referral was measured on
    assert "not a diagnostic device" in text.lower()
    assert "CC BY-NC 4.0 (non-commercial research, attribution)" in text
    assert "CC BY-NC-ND 3.0 NZ" in text
    assert "0.587 [0.551, 0.620]" in text  # validation balanced accuracy with its interval
    assert "| 0.543 |" in text  # the test set's own value, without an interval
    assert "0.933 [0.907, 0.955]" in text  # referral sensitivity with its interval
    assert "1.432" in text and "0.209" in text  # temperature and threshold
    assert "skintriage train config.yaml" in text


def test_write_model_card_tolerates_a_bare_bundle(tmp_path: Path) -> None:
    bare = {"format_version": 1, "name": "bare", "classes": ["mel", "nv"], "weights_sha256": "0" * 64}
    (tmp_path / "model.json").write_text(json.dumps(bare), encoding="utf-8")

    text = write_model_card(tmp_path).read_text(encoding="utf-8")

    assert "Merkel cell carcinoma was NOT in the training data" in text
    assert "No evaluation recorded" in text
