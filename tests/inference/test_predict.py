"""From an image to a referral on the bundled model: Predictor, its JSON shape, and the predict/guidance commands."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import skimage
import torch
from PIL import Image, ImageDraw, ImageFilter
from typer.testing import CliRunner

from skintriage import DISCLAIMER
from skintriage.cli import app
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.images import decode_image
from skintriage.inference.predictor import FileError, Prediction, Predictor
from skintriage.model.bundle import METADATA_FILE, load_bundle, save_bundle
from skintriage.model.registry import create_model, normalization_for
from skintriage.triage.acquisition import AcquisitionClassifier
from skintriage.triage.guidance import load_guidance, topics_for_differential
from skintriage.triage.referral import RULES, ClinicalContext, Level, ReferralPolicy, decide, rules_markdown
from skintriage.triage.uncertainty import UncertaintyGate
from tests.helpers import shared_data, write_image

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MALIGNANT = ("mel", "bcc", "scc", "akiec", "other_malignant")
LEVELS = set(Level)
runner = CliRunner()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    if not (DEFAULT_BUNDLE / METADATA_FILE).is_file():
        pytest.skip(f"no bundled model at {DEFAULT_BUNDLE}")
    return Predictor.load()


def lesion(seed: int = 0, size: tuple[int, int] = (200, 160)) -> Image.Image:
    """A lesion-like picture: a blurred brown oval on a skin-coloured background, with a little noise."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (225, 180, 150))
    width, height = size
    colour = tuple(int(c) for c in rng.integers(40, 110, size=3))
    ImageDraw.Draw(image).ellipse((0.3 * width, 0.3 * height, 0.7 * width, 0.7 * height), fill=colour)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(4)), dtype=np.int16)
    pixels = pixels + rng.integers(-8, 9, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_lesion(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lesion(seed).save(path)
    return path


def not_an_image(path: Path) -> Path:
    path.write_text("this is a text file, not a JPEG", encoding="utf-8")
    return path


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def flat(text: str) -> str:
    """Rich wraps long lines at the console width; compare text with all whitespace runs made single spaces."""
    return " ".join(text.split())


# --- Predictor ------------------------------------------------------------------------------------------


def test_predict_gives_calibrated_probabilities_groups_and_malignancy_in_bundle_order(predictor: Predictor) -> None:
    prediction = predictor.predict(lesion())
    assert list(prediction.probabilities) == predictor.bundle.classes == predictor.classes
    assert math.isclose(sum(prediction.probabilities.values()), 1.0, abs_tol=1e-5)
    assert all(0.0 <= p <= 1.0 for p in prediction.probabilities.values())

    groups = prediction.triage_probabilities
    assert set(groups) == {"mcc", "cutaneous_metastasis", "other_malignant", "benign"}
    assert groups["mcc"] is None and groups["cutaneous_metastasis"] is None  # no such class: not measured, not 0
    assert math.isclose(groups["other_malignant"] + groups["benign"], 1.0, abs_tol=1e-5)
    note = prediction.to_dict()["triage_probabilities_note"]
    assert note.startswith("mcc, cutaneous_metastasis: null because the model has no class for them")

    malignant_sum = sum(prediction.probabilities[c] for c in MALIGNANT)
    assert prediction.malignancy_probability == pytest.approx(malignant_sum, abs=1e-6)
    assert groups["other_malignant"] == pytest.approx(malignant_sum, abs=1e-6)
    assert prediction.class_call in predictor.classes
    assert prediction.referral.level in LEVELS
    assert prediction.uncertainty is not None  # the bundled model has its gate fitted
    assert prediction.heatmap is None and prediction.file is None


def test_the_referral_is_the_engine_applied_with_the_thresholds_of_the_photo_type(predictor: Predictor) -> None:
    context = ClinicalContext(age=72, site="face", asymptomatic=True, new_or_enlarging_nodule=True)
    prediction = predictor.predict(lesion(1), context)
    calibration = prediction.acquisition.calibration  # "dermoscopic" / "clinical", or "pooled"
    kind = None if calibration == "pooled" else calibration
    policy = ReferralPolicy.from_metadata(predictor.bundle.metadata.to_json_dict(), acquisition=kind)
    assert prediction.referral == decide(prediction.probabilities, prediction.uncertainty, context, policy)
    assert predictor.policy.referral_threshold == predictor.bundle.metadata.calibration.referral_threshold


def test_context_changes_the_level_as_the_engine_says(predictor: Predictor) -> None:
    image = lesion(0)
    plain = predictor.predict(image)
    with_prior_mcc = predictor.predict(image, ClinicalContext(prior_mcc=True))
    assert with_prior_mcc.probabilities == plain.probabilities  # context never changes what the model sees
    assert with_prior_mcc.referral.level == "urgent"
    assert "prior_mcc" in [r.rule for r in with_prior_mcc.referral.reasons]
    assert "mcc_recurrence" in [d.workup for d in with_prior_mcc.referral.differential]
    assert with_prior_mcc.guidance_topics == topics_for_differential(
        d.workup for d in with_prior_mcc.referral.differential
    )

    # the classic MCC picture (rapid growth, asymptomatic, older than 50, UV-exposed site) is urgent on any image
    aeiou = predictor.predict(image, ClinicalContext(age=80, site="scalp", rapid_growth=True, asymptomatic=True))
    assert {"aeiou_features", "clinically_suspected_mcc"} <= {r.rule for r in aeiou.referral.reasons}
    assert aeiou.referral.level == "urgent"


def test_to_dict_has_the_documented_shape_and_round_trips_through_json(predictor: Predictor) -> None:
    data = predictor.predict(lesion(2), file="lesion.png").to_dict()
    assert data["file"] == "lesion.png"
    assert list(data["probabilities"]) == predictor.classes
    assert isinstance(data["malignancy_probability"], float)
    assert isinstance(data["uncertainty"], float) and data["uncertainty"] == data["uncertainty_detail"]["score"]
    assert data["referral"]["level"] in LEVELS
    assert data["referral"]["reasons"] and all(isinstance(text, str) for text in data["referral"]["reasons"])
    assert len(data["referral"]["rules"]) == len(data["referral"]["reasons"])
    assert isinstance(data["differential"], list)
    assert all(set(entry) == {"condition", "name", "why", "workup"} for entry in data["differential"])
    assert data["class_call"]["code"] in predictor.classes
    assert data["disclaimer"] == DISCLAIMER
    assert any("never seen Merkel cell carcinoma" in limit for limit in data["limits"])
    assert json.loads(json.dumps(data)) == data


def test_predict_batch_equals_predicting_each_image_alone(predictor: Predictor) -> None:
    images = [lesion(seed, size) for seed, size in ((0, (200, 160)), (3, (128, 128)), (4, (90, 300)))]
    batch = predictor.predict_batch(images, files=["a", "b", "c"])
    assert [p.file for p in batch] == ["a", "b", "c"]
    for image, together in zip(images, batch, strict=True):
        alone = predictor.predict(image)
        for code in predictor.classes:
            assert together.probabilities[code] == pytest.approx(alone.probabilities[code], abs=1e-5)
        assert together.uncertainty.score == pytest.approx(alone.uncertainty.score, abs=1e-4)
        assert together.referral.level == alone.referral.level


def test_predict_files_reports_an_unreadable_file_and_goes_on(predictor: Predictor, tmp_path: Path) -> None:
    paths = [
        write_lesion(tmp_path / "a.png", 0),
        not_an_image(tmp_path / "fake.jpg"),
        write_lesion(tmp_path / "b.png", 1),
        tmp_path / "missing.png",
        write_lesion(tmp_path / "c.png", 2),
    ]
    results = list(predictor.predict_files(paths, batch_size=2))
    assert [type(r) for r in results] == [Prediction, FileError, Prediction, FileError, Prediction]
    assert [r.file for r in results] == [str(p) for p in paths]
    assert "not a recognised image file" in results[1].error and "fake.jpg" in results[1].error
    assert "file not found" in results[3].error
    assert results[1].to_dict() == {"file": str(paths[1]), "error": results[1].error}
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, Prediction):
            alone = predictor.predict(decode_image(path))
            assert result.malignancy_probability == pytest.approx(alone.malignancy_probability, abs=1e-5)


def test_saliency_reuses_its_forward_pass_and_changes_no_output(predictor: Predictor) -> None:
    image = lesion(seed=3)
    plain, explained = predictor.predict(image), predictor.predict(image, with_saliency=True)
    for code, value in plain.probabilities.items():
        assert explained.probabilities[code] == pytest.approx(value, abs=1e-6)
    assert explained.uncertainty.ood_distance == pytest.approx(plain.uncertainty.ood_distance, rel=1e-5)
    assert explained.referral.level == plain.referral.level


def test_saliency_is_a_unit_heatmap_of_the_input_size_and_overlays_at_the_original_size(predictor: Predictor) -> None:
    image = lesion(0, (200, 160))
    prediction = predictor.predict(image, with_saliency=True)
    size = predictor.bundle.metadata.preprocessing.input_size
    assert prediction.heatmap.shape == (size, size)
    assert np.isfinite(prediction.heatmap).all()
    assert prediction.heatmap.min() >= 0.0 and prediction.heatmap.max() <= 1.0
    assert prediction.probabilities == pytest.approx(predictor.predict(image).probabilities, abs=1e-5)
    shown = predictor.overlay(image, prediction.heatmap)
    assert shown.size == image.size and shown.mode == "RGB"


SKIMAGE_PHOTOS = Path(skimage.__file__).parent / "data"
# Photographs with no skin lesion in them; the portrait of Grace Hopper is one too, but see the next test.
NON_SKIN_PHOTOS = [SKIMAGE_PHOTOS / name for name in ("coffee.png", "rocket.jpg", "chelsea.png", "motorcycle_left.png",
                                                     "astronaut.png")]  # fmt: skip


def assert_cannot_be_assessed(prediction: Prediction) -> None:
    assert prediction.uncertainty.out_of_distribution
    assert prediction.uncertainty.score > 1.0
    assert prediction.referral.level != "routine"
    assert "out_of_distribution" in [r.rule for r in prediction.referral.reasons]
    assert "cannot_assess" in [d.condition for d in prediction.referral.differential]
    assert "biopsy" in prediction.guidance_topics


@pytest.mark.parametrize("photo", NON_SKIN_PHOTOS, ids=lambda path: path.name)
def test_a_non_skin_photo_is_out_of_distribution_and_never_routine(predictor: Predictor, photo: Path) -> None:
    if not photo.is_file():
        pytest.skip(f"scikit-image's sample photo is absent: {photo}")
    assert_cannot_be_assessed(predictor.predict(decode_image(photo)))


@pytest.mark.xfail(
    reason="known limit of the bundled model's gate: this portrait (facial skin, no lesion) scores 0.97, under the "
    "out-of-distribution threshold, and comes back routine; it is the 1 routine among the 26 non-skin photos of "
    "experiments/referral_engine, and the five photos of the test above score only 1.03 to 1.06: the margin is thin",
    strict=False,
)
def test_a_portrait_is_out_of_distribution_and_never_routine(predictor: Predictor) -> None:
    if not GRACE_HOPPER.is_file():
        pytest.skip(f"matplotlib's sample photo is absent: {GRACE_HOPPER}")
    assert_cannot_be_assessed(predictor.predict(decode_image(GRACE_HOPPER)))


def test_real_dermoscopic_images_mostly_pass_the_out_of_distribution_check(predictor: Predictor) -> None:
    root = shared_data("ham10000_isic2018_224")
    files = pd.read_csv(root / "isic2018_task3_test_labels.csv")["file"].head(32)
    results = list(predictor.predict_files(root / f for f in files))
    assert all(isinstance(r, Prediction) for r in results)
    assert sum(r.uncertainty.out_of_distribution for r in results) <= 2  # ~1% of validation images trip it


TINY_PREPROCESSING = {"input_size": 32, "normalization": normalization_for("resnet18").to_dict()}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """A 3-class bundle with no calibrated thresholds and no uncertainty gate."""
    directory = tmp_path_factory.mktemp("tiny") / "bundle"
    metadata = {"name": "tiny", "classes": ["mel", "nv", "bcc"], "preprocessing": TINY_PREPROCESSING}
    return save_bundle(directory, create_model("resnet18", num_classes=3, input_size=32), metadata)


def test_a_bundle_without_calibrated_thresholds_is_refused_naming_fit_gates(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="skintriage fit-gates"):
        Predictor.load(tiny_bundle)
    image = write_image(tiny_bundle.parent / "x.png", size=(40, 40))
    result = runner.invoke(app, ["predict", str(image), "--checkpoint", str(tiny_bundle)])
    assert result.exit_code == 1
    assert "skintriage fit-gates" in flat(result.output) and "Traceback" not in result.output


def test_a_bundle_without_an_uncertainty_gate_says_it_cannot_assess(tiny_bundle: Path, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(tiny_bundle, tmp_path / "calibrated"))
    path = directory / METADATA_FILE
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata["calibration"] = {"temperature": 1.0, "referral_threshold": 0.3, "urgent": {"threshold": 0.7}}
    path.write_text(json.dumps(metadata), encoding="utf-8")

    predictor = Predictor(load_bundle(directory))
    assert predictor.gate is None
    prediction = predictor.predict(lesion())
    assert prediction.uncertainty is None
    assert "no_uncertainty_gate" in [r.rule for r in prediction.referral.reasons]
    assert prediction.referral.level != "routine"
    data = prediction.to_dict()
    assert data["uncertainty"] is None and data["uncertainty_detail"] is None


# --- per acquisition type: a tiny bundle whose numbers are worked by hand ---------------------------------------
#
# The head's weights are zero and its bias is (1, 0, 0) for (mel, nv, bcc), so every image has those logits and a
# malignancy probability (mel + bcc) of (e^(1/T) + 1) / (e^(1/T) + 2) at temperature T:
#   T = 1 (pooled): 0.7880      T = 0.5 (dermoscopic): 0.8935      T = 2 (clinical): 0.7259
# Thresholds, referral / urgent: pooled 0.30 / 0.60 -> urgent; dermoscopic 0.95 / 0.97 -> routine;
# clinical 0.50 / 0.90 -> refer. The gate passes every image; the acquisition classifier reads every image
# as dermoscopic with probability sigmoid(3) = 0.9526.


def malignancy_at(temperature: float) -> float:
    return (math.exp(1 / temperature) + 1) / (math.exp(1 / temperature) + 2)


def by_type_entry(temperature: float, referral: float, urgent: float, n: int, fallback: str | None = None) -> dict:
    return {
        "temperature": temperature,
        "referral_threshold": referral,
        "target_sensitivity": 0.95,
        "validation": {"n_images": n, "referral_sensitivity": 0.967, "referral_specificity": 0.4},
        "urgent": {
            "threshold": urgent,
            "target_specificity": 0.95,
            "validation_sensitivity": 0.3,
            "validation_specificity": 0.95,
        },
        "fallback": fallback,
    }


POOLED_ENTRY = {key: value for key, value in by_type_entry(1.0, 0.3, 0.6, 100).items() if key != "fallback"}
TYPED_CALIBRATION = {
    **POOLED_ENTRY,  # the pooled calibration has no fallback: it is what a type falls back to
    "by_acquisition": {"dermoscopic": by_type_entry(0.5, 0.95, 0.97, 40), "clinical": by_type_entry(2.0, 0.5, 0.9, 60)},
}


@pytest.fixture(scope="module")
def typed_bundle(tmp_path_factory) -> Path:
    model = create_model("resnet18", num_classes=3, input_size=32)
    head = model.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    dims = head.in_features
    gate = UncertaintyGate(
        np.zeros((1, dims)), np.zeros((dims, dims)), 1.0, 1.0, 0.99, 0.95
    )  # distance 0, entropy <= 1
    reads_dermoscopic = AcquisitionClassifier(
        ("clinical", "dermoscopic"), np.zeros(dims), np.ones(dims), np.zeros(dims), 3.0
    )
    metadata = {
        "name": "typed",
        "classes": ["mel", "nv", "bcc"],
        "preprocessing": TINY_PREPROCESSING,
        "calibration": TYPED_CALIBRATION,
        "uncertainty": gate.summary(),
        "acquisition_classifier": reads_dermoscopic.summary(),
    }
    return save_bundle(
        tmp_path_factory.mktemp("typed") / "bundle",
        model,
        metadata,
        uncertainty_tensors=gate.tensors(),
        acquisition_tensors=reads_dermoscopic.tensors(),
    )


@pytest.fixture(scope="module")
def typed(typed_bundle: Path) -> Predictor:
    return Predictor.load(typed_bundle, variant="torch-float32")


def edited_copy(bundle: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``bundle`` whose model.json has been changed by ``edit(metadata)``."""
    directory = Path(shutil.copytree(bundle, tmp_path / "edited"))
    path = directory / METADATA_FILE
    metadata = json.loads(path.read_text(encoding="utf-8"))
    edit(metadata)
    path.write_text(json.dumps(metadata), encoding="utf-8")
    return directory


def test_auto_uses_the_models_reading_and_that_types_temperature_and_thresholds(typed: Predictor) -> None:
    prediction = typed.predict(lesion())
    used = prediction.acquisition
    assert (used.kind, used.chosen_by, used.calibration) == ("dermoscopic", "model", "dermoscopic")
    assert used.probability == pytest.approx(1 / (1 + math.exp(-3)))
    assert (used.temperature, used.referral_threshold, used.urgent_threshold) == (0.5, 0.95, 0.97)
    assert prediction.malignancy_probability == pytest.approx(malignancy_at(0.5), abs=1e-6)
    assert prediction.referral.level == "routine"  # 0.8935 < 0.95: below the dermoscopic referral threshold
    (routine,) = prediction.referral.reasons
    assert "below the referral threshold 0.950 (the dermoscopic-image threshold)" in routine.text


def test_the_users_type_overrides_the_model_and_its_threshold_gives_another_level(typed: Predictor) -> None:
    prediction = typed.predict(lesion(), acquisition="clinical")
    used = prediction.acquisition
    assert (used.kind, used.chosen_by, used.temperature) == ("clinical", "user", 2.0)
    assert used.probability == pytest.approx(1 - 1 / (1 + math.exp(-3)))  # the model's probability of "clinical"
    assert "the model reads it as a dermoscopic image" in used.why
    assert prediction.malignancy_probability == pytest.approx(malignancy_at(2.0), abs=1e-6)
    assert prediction.referral.level == "refer"  # 0.50 <= 0.7259 < 0.90
    assert [r.rule for r in prediction.referral.reasons] == ["malignancy_above_referral_threshold"]
    assert prediction.referral.reasons[0].text == (
        f"Malignancy probability {malignancy_at(2.0):.3f} is at or above the referral threshold 0.500 (the "
        "clinical-photo threshold; chosen for 95% sensitivity on 60 clinical validation images of common skin lesions "
        "(none of them an MCC or a metastasis), where it reached sensitivity 0.967 and specificity 0.400)."
    )
    data = prediction.to_dict()["acquisition"]
    assert data == used.to_dict() and json.loads(json.dumps(data)) == data
    assert data["chosen_by"] == "user" and data["referral_threshold"] == 0.5 and data["urgent_threshold"] == 0.9


def test_batches_files_and_saliency_choose_the_same_way(typed: Predictor, tmp_path: Path) -> None:
    image = lesion(1)
    for acquisition, level in (("auto", "routine"), ("dermoscopic", "routine"), ("clinical", "refer")):
        alone = typed.predict(image, acquisition=acquisition)
        (batch,) = typed.predict_batch([image], acquisition=acquisition)
        (from_file,) = typed.predict_files([write_lesion(tmp_path / "a.png", 1)], acquisition=acquisition)
        explained = typed.predict(image, acquisition=acquisition, with_saliency=True)
        for result in (alone, batch, from_file, explained):
            assert result.referral.level == level
            assert result.acquisition.kind == alone.acquisition.kind
            assert result.malignancy_probability == pytest.approx(alone.malignancy_probability, abs=1e-6)
    assert typed.predict(image, acquisition="dermoscopic").acquisition.chosen_by == "user"


def test_an_unknown_acquisition_is_refused_naming_the_choices(typed: Predictor) -> None:
    with pytest.raises(ValueError, match="acquisition must be one of auto, dermoscopic, clinical, not 'phone'"):
        typed.predict(lesion(), acquisition="phone")
    with pytest.raises(ValueError, match="not 'phone'"):
        typed.predict_files([], acquisition="phone")


def test_the_same_bundle_without_per_type_parts_predicts_with_the_pooled_values(typed_bundle, tmp_path) -> None:
    def strip(metadata: dict) -> None:
        del metadata["calibration"]["by_acquisition"], metadata["acquisition_classifier"]

    old = Predictor.load(edited_copy(typed_bundle, tmp_path, strip), variant="torch-float32")
    assert old.acquisition_classifier is None and old.calibrations == {} and old.policies == {}
    for acquisition in ("auto", "clinical"):
        prediction = old.predict(lesion(), acquisition=acquisition)
        used = prediction.acquisition
        assert used.calibration == "pooled" and (used.temperature, used.referral_threshold) == (1.0, 0.3)
        assert prediction.malignancy_probability == pytest.approx(malignancy_at(1.0), abs=1e-6)
        assert prediction.referral == decide(prediction.probabilities, prediction.uncertainty, None, old.policy)
        assert prediction.referral.reasons[0].text.endswith(
            "(the pooled threshold (dermoscopic and clinical images together); chosen for 95% specificity on 100 "
            "validation images of common skin lesions (none of them an MCC or a metastasis), where it reached "
            "sensitivity 0.300 and specificity 0.950)."
        )
    assert old.predict(lesion()).acquisition.chosen_by == "pooled"


def test_a_type_that_kept_the_pooled_values_says_so_in_the_reason(typed_bundle, tmp_path) -> None:
    def small_clinical(metadata: dict) -> None:
        reason = "pooled: only 12 clinical validation images (at least 20 needed)"
        metadata["calibration"]["by_acquisition"]["clinical"] = by_type_entry(1.0, 0.3, 0.6, 100, fallback=reason)

    predictor = Predictor.load(edited_copy(typed_bundle, tmp_path, small_clinical), variant="torch-float32")
    prediction = predictor.predict(lesion(), acquisition="clinical")
    assert prediction.referral.level == "urgent" and prediction.acquisition.referral_threshold == 0.3
    assert "its temperature and thresholds are the pooled ones" in prediction.acquisition.why
    assert prediction.referral.reasons[0].text.endswith(
        "(the pooled threshold, used for clinical photos because there were only 12 clinical validation images "
        "(at least 20 needed); chosen for 95% specificity on 100 validation images of common skin lesions (none of "
        "them an MCC or a metastasis), where it reached sensitivity 0.300 and specificity 0.950)."
    )


def test_the_bundled_model_reads_the_photo_type_and_uses_its_calibration(predictor) -> None:
    used = predictor.predict(lesion()).acquisition
    assert used.chosen_by == "model" and used.kind in ("dermoscopic", "clinical") and used.calibration == used.kind
    assert 0.5 <= used.probability <= 1.0


def test_predict_cli_passes_the_acquisition_through(typed_bundle: Path, tmp_path: Path) -> None:
    image = write_lesion(tmp_path / "lesion.png")
    args = ["predict", str(image), "--checkpoint", str(typed_bundle)]
    (auto,) = json_lines(runner.invoke(app, [*args, "--json"]).stdout)
    (clinical,) = json_lines(runner.invoke(app, [*args, "--json", "--acquisition", "clinical"]).stdout)
    assert (auto["acquisition"]["kind"], auto["acquisition"]["chosen_by"], auto["referral"]["level"]) == (
        "dermoscopic",
        "model",
        "routine",
    )
    assert (clinical["acquisition"]["kind"], clinical["referral"]["level"]) == ("clinical", "refer")
    text = runner.invoke(app, [*args, "--acquisition", "clinical"])
    assert text.exit_code == 0 and "photo type: clinical (you said it is a clinical photo" in flat(text.stdout)
    refused = runner.invoke(app, [*args, "--acquisition", "phone"])
    assert refused.exit_code == 1 and "acquisition must be one of auto, dermoscopic, clinical" in flat(refused.output)


# --- skintriage predict ---------------------------------------------------------------------------------


def test_predict_json_prints_one_object_per_file_with_context_and_an_error_object(tmp_path: Path) -> None:
    image = write_lesion(tmp_path / "lesion.png")
    broken = not_an_image(tmp_path / "broken.jpg")
    args = ["predict", str(image), str(broken), "--json", "--age", "70", "--site", "face"]
    result = runner.invoke(app, [*args, "--asymptomatic", "--rapid-growth"])

    assert result.exit_code == 1
    good, bad = json_lines(result.stdout)
    assert good["file"] == str(image)
    assert math.isclose(sum(good["probabilities"].values()), 1.0, abs_tol=1e-5)
    assert good["referral"]["level"] in {"refer", "urgent"}  # four AEIOU features: never routine
    assert "aeiou_features" in good["referral"]["rules"]
    aeiou = good["referral"]["reasons"][good["referral"]["rules"].index("aeiou_features")]
    assert aeiou.startswith("A new or enlarging lesion with 4 of the 5 AEIOU features") and "(age 70)" in aeiou
    assert "UV-exposed site (face; skin type not given)" in aeiou
    assert good["referral"]["level"] == "urgent"  # rapid growth with three more features: clinically suspected MCC
    assert "mcc" in [d["condition"] for d in good["differential"]]
    assert set(bad) == {"file", "error"}
    assert bad["file"] == str(broken) and "not a recognised image file" in bad["error"]


def test_predict_expands_a_folder_to_its_images_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    write_lesion(folder / "b.png", 1)
    write_lesion(folder / "a.jpg", 0)
    (folder / "notes.txt").write_text("not an image suffix: skipped", encoding="utf-8")
    (folder / "nested").mkdir()
    write_lesion(folder / "nested" / "c.png", 2)  # folders are not recursed into

    result = runner.invoke(app, ["predict", str(folder), "--json"])

    assert result.exit_code == 0, result.output
    assert [line["file"] for line in json_lines(result.stdout)] == [str(folder / "a.jpg"), str(folder / "b.png")]


def test_predict_saliency_writes_an_overlay_per_readable_image(tmp_path: Path) -> None:
    image = write_lesion(tmp_path / "in" / "mole.png")
    broken = not_an_image(tmp_path / "in" / "broken.jpg")
    out = tmp_path / "saliency"

    result = runner.invoke(app, ["predict", str(image), str(broken), "--saliency", str(out), "--json"])

    assert result.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["mole_saliency.png"]
    with Image.open(out / "mole_saliency.png") as written:
        assert written.size == Image.open(image).size
    lines = json_lines(result.stdout)
    assert [line["file"] for line in lines] == [str(image), str(broken)] and "error" in lines[1]


def test_predict_with_an_unknown_site_exits_1_naming_it(tmp_path: Path) -> None:
    image = write_lesion(tmp_path / "lesion.png")
    result = runner.invoke(app, ["predict", str(image), "--site", "elbow pit"])
    assert result.exit_code == 1
    assert "unknown body site 'elbow pit'" in flat(result.output) and "Traceback" not in result.output


def test_predict_human_readable_shows_level_reasons_and_the_disclaimer(tmp_path: Path) -> None:
    image = write_lesion(tmp_path / "lesion.png")
    result = runner.invoke(app, ["predict", str(image), "--prior-mcc"])
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert f"{image}: URGENT (malignancy probability" in text
    assert "The patient has had Merkel cell carcinoma" in text
    assert "consider Recurrence or metastasis of Merkel cell carcinoma:" in text
    assert flat(DISCLAIMER) in text


def test_predict_human_readable_sends_a_bad_file_to_stderr_and_exits_1(tmp_path: Path) -> None:
    broken = not_an_image(tmp_path / "broken.jpg")
    result = runner.invoke(app, ["predict", str(broken)])
    assert result.exit_code == 1
    assert "broken.jpg" in result.stderr and "not a recognised image file" in result.stderr


# --- skintriage guidance --------------------------------------------------------------------------------


def test_guidance_markdown_has_every_topic_and_the_sources() -> None:
    result = runner.invoke(app, ["guidance"])
    assert result.exit_code == 0, result.output
    for topic in load_guidance().topics.values():
        assert f"## {topic.title}" in result.stdout
    assert "## Sources" in result.stdout
    assert DISCLAIMER in result.stdout


def test_guidance_json_for_one_topic_contains_only_that_topic() -> None:
    result = runner.invoke(app, ["guidance", "--topic", "immunohistochemistry", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [topic["id"] for topic in data["topics"]] == ["immunohistochemistry"]
    assert data["disclaimer"] == DISCLAIMER
    assert data["sources"]  # the sources that topic cites, resolved


def test_guidance_unknown_topic_exits_1_listing_the_valid_ids() -> None:
    result = runner.invoke(app, ["guidance", "--topic", "no_such_topic"])
    assert result.exit_code == 1
    message = flat(result.output)
    assert "no_such_topic" in message
    for topic_id in load_guidance().topics:
        assert topic_id in message


def test_guidance_for_a_workup_shows_its_topics_and_the_neuroendocrine_tests_only_for_a_known_net() -> None:
    def topic_ids(workup: str) -> list[str]:
        result = runner.invoke(app, ["guidance", "--workup", workup, "--format", "json"])
        assert result.exit_code == 0, result.output
        return [topic["id"] for topic in json.loads(result.stdout)["topics"]]

    assert topic_ids("suspected_mcc") == topics_for_differential("suspected_mcc")
    assert {"biopsy", "immunohistochemistry", "mcc_staging", "nodal_staging"} <= set(topic_ids("suspected_mcc"))
    neuroendocrine = {"biochemistry", "net_imaging", "grading"}
    assert not neuroendocrine & set(topic_ids("metastasis"))
    assert neuroendocrine <= set(topic_ids("neuroendocrine_metastasis"))
    assert "mcc_recurrence" in topic_ids("mcc_recurrence") and "biochemistry" not in topic_ids("mcc_recurrence")
    assert topic_ids("other_malignant") == ["biopsy"]
    result = runner.invoke(app, ["guidance", "--workup", "lymphoma"])
    assert result.exit_code == 1
    assert "unknown work-up pathway 'lymphoma'" in flat(result.output) and "suspected_mcc" in flat(result.output)


def test_rules_prints_the_engines_table_and_json_lists_every_rule_with_its_level() -> None:
    markdown = runner.invoke(app, ["rules"])
    assert markdown.exit_code == 0, markdown.output
    assert markdown.stdout.startswith(rules_markdown()) and DISCLAIMER in markdown.stdout
    result = runner.invoke(app, ["rules", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rules"]
    assert [row["rule"] for row in rows] == [rule.id for rule in RULES]
    assert {row["rule"]: row["level"] for row in rows}["clinically_suspected_mcc"] == "urgent"
    assert all(row["fires_when"] for row in rows)


def test_predict_counts_aeiou_only_for_a_new_or_enlarging_lesion_and_honours_skin_type(tmp_path: Path) -> None:
    image = write_lesion(tmp_path / "lesion.png")
    older = ["predict", str(image), "--json", "--age", "72", "--site", "face", "--asymptomatic"]
    static = json_lines(runner.invoke(app, older).stdout)[0]
    assert "aeiou_features" not in static["referral"]["rules"]  # A, O, U fit most lesions of older people
    new = json_lines(runner.invoke(app, [*older, "--new-or-enlarging"]).stdout)[0]
    assert "aeiou_features" in new["referral"]["rules"]
    assert (
        "UV-exposed site (face; skin type not given)"
        in new["referral"]["reasons"][new["referral"]["rules"].index("aeiou_features")]
    )
    dark = json_lines(runner.invoke(app, [*older, "--new-or-enlarging", "--not-fair-skin"]).stdout)[0]
    assert "aeiou_features" not in dark["referral"]["rules"]  # U no longer counts: 2 of 5 features


def test_guidance_refuses_an_unknown_format() -> None:
    result = runner.invoke(app, ["guidance", "--format", "xml"])
    assert result.exit_code == 1
    assert "--format must be md or json, not 'xml'" in flat(result.output)
