"""The evaluation report (report.md and its plots) on a small hand-built evaluation; the model card is test_model_card."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skintriage import DISCLAIMER, metrics
from skintriage.common.markdown import fmt
from skintriage.evaluation import evaluate
from skintriage.evaluation.report import write_report
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


def test_importing_the_report_selects_no_backend_and_loads_no_pyplot() -> None:
    """A Gradio demo or notebook that imports the report keeps its own matplotlib backend."""
    code = (
        "import sys, matplotlib; before = matplotlib.rcParams._get('backend'); import skintriage.evaluation.report; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
        "assert matplotlib.rcParams._get('backend') is before, 'backend chosen'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plots_leave_no_figure_in_pyplots_registry(result: evaluate.EvaluationResult, tmp_path: Path) -> None:
    from matplotlib import _pylab_helpers

    before = _pylab_helpers.Gcf.get_num_fig_managers()
    write_report(result, tmp_path)
    assert _pylab_helpers.Gcf.get_num_fig_managers() == before  # nothing to close, nothing kept alive
