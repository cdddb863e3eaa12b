"""The uncertainty gate: entropy and Mahalanobis by hand, thresholds as validation quantiles, and the bundle file."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from skintriage.model.bundle import METADATA_FILE, UNCERTAINTY_FILE, BundleError, load_bundle, save_bundle, sha256_of
from skintriage.model.registry import create_model
from skintriage.triage.uncertainty import (
    METHOD,
    Uncertainty,
    UncertaintyGate,
    fit_class_gaussians,
    fit_uncertainty_gate,
    flag_rates,
    mahalanobis_to_nearest_mean,
    normalised_entropy,
)

# --- normalised entropy --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 11])
def test_uniform_probabilities_have_normalised_entropy_one(n: int) -> None:
    assert normalised_entropy(np.full((1, n), 1.0 / n))[0] == pytest.approx(1.0, abs=1e-12)


def test_two_class_fifty_fifty_is_one_and_a_one_hot_is_zero() -> None:
    entropy = normalised_entropy(np.array([[0.5, 0.5], [1.0, 0.0]]))
    assert entropy[0] == pytest.approx(1.0, abs=1e-12)
    assert entropy[1] == pytest.approx(0.0, abs=1e-9)
    eleven = np.zeros((1, 11))
    eleven[0, 5] = 1.0
    assert normalised_entropy(eleven)[0] == pytest.approx(0.0, abs=1e-9)


def test_entropy_of_a_half_quarter_quarter_split_by_hand() -> None:
    # H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2; normalised by ln 3
    assert normalised_entropy(np.array([[0.5, 0.25, 0.25]]))[0] == pytest.approx(1.5 * math.log(2) / math.log(3))


def test_entropy_is_computed_per_row() -> None:
    rows = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    # [0.5, 0.5, 0, 0]: ln 2 / ln 4 = 0.5
    assert normalised_entropy(rows) == pytest.approx([0.5, 1.0], abs=1e-9)


@pytest.mark.parametrize("shape", [(5,), (3, 1), (2, 2, 2)])
def test_entropy_refuses_anything_but_rows_of_two_or_more_classes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected an \\(n, classes >= 2\\) probability array"):
        normalised_entropy(np.full(shape, 0.5))


# --- Mahalanobis distance ---------------------------------------------------------------------------------


def test_identity_precision_gives_the_euclidean_distance_to_the_nearest_mean() -> None:
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    points = np.array([[3.0, 4.0], [10.0, 1.0], [6.0, 0.0], [5.0, 12.0]])
    # nearest means: (0,0) at 5; (10,0) at 1; (10,0) at 4; both at 13 (5-12-13)
    assert mahalanobis_to_nearest_mean(points, means, np.eye(2)) == pytest.approx([5.0, 1.0, 4.0, 13.0])


def test_a_diagonal_precision_scales_each_axis_by_its_standard_deviation() -> None:
    means = np.array([[0.0, 0.0]])
    precision = np.diag([1 / 4.0, 1.0])  # standard deviation 2 along x, 1 along y
    points = np.array([[4.0, 0.0], [0.0, 2.0], [6.0, 4.0]])
    # (4/2)^2 = 4; 2^2 = 4; (6/2)^2 + 4^2 = 25
    assert mahalanobis_to_nearest_mean(points, means, precision) == pytest.approx([2.0, 2.0, 5.0])


# --- class Gaussians -------------------------------------------------------------------------------------


def synthetic(n_per_class: int, *, seed: int, dims: int = 6, labels=(2, 7, 9)) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance Gaussian clouds centred 8 apart along the first axes, with unsorted labels."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((len(labels), dims))
    for i in range(len(labels)):
        centres[i, i] = 8.0 * (i + 1)
    y = rng.permutation(np.repeat(labels, n_per_class))
    x = centres[np.searchsorted(labels, y)] + rng.standard_normal((len(y), dims))
    return x, y


def test_fit_class_gaussians_recovers_the_means_in_label_order_and_the_unit_covariance() -> None:
    x, y = synthetic(3000, seed=0)
    means, precision = fit_class_gaussians(x, y)
    expected = np.zeros((3, 6))
    expected[0, 0], expected[1, 1], expected[2, 2] = 8.0, 16.0, 24.0
    assert means.shape == (3, 6) and precision.shape == (6, 6)
    np.testing.assert_allclose(means, expected, atol=0.08)  # 4 standard errors of a mean of 3000 draws
    np.testing.assert_allclose(precision, np.eye(6), atol=0.08)  # shared covariance is the identity


def test_fit_class_gaussians_refuses_labels_that_do_not_match_the_embeddings() -> None:
    with pytest.raises(ValueError, match="need one label per embedding \\(4 embeddings, 3 labels\\)"):
        fit_class_gaussians(np.zeros((4, 2)), np.array([0, 1, 0]))


# --- the fitted gate ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted() -> tuple[UncertaintyGate, np.ndarray, np.ndarray]:
    train_x, train_y = synthetic(500, seed=1)
    val_x, _ = synthetic(1000 // 3 + 1, seed=2)
    val_x = val_x[:1000]
    val_p = np.random.default_rng(3).dirichlet(np.ones(3), size=1000)
    gate = fit_uncertainty_gate(
        train_embeddings=train_x, train_labels=train_y, val_embeddings=val_x, val_probabilities=val_p
    )
    return gate, val_x, val_p


def test_gate_thresholds_are_the_validation_quantiles(fitted) -> None:
    gate, val_x, val_p = fitted
    distance = mahalanobis_to_nearest_mean(val_x, gate.class_means, gate.precision)
    assert gate.ood_threshold == np.quantile(distance, 0.99)
    assert gate.entropy_threshold == np.quantile(normalised_entropy(val_p), 0.95)
    assert (gate.ood_quantile, gate.low_confidence_quantile) == (0.99, 0.95)


def test_exactly_one_and_five_percent_of_1000_validation_images_trip_the_gate(fitted) -> None:
    # np.quantile interpolates between the 990th and 991st of 1000 sorted values: 10 lie strictly above
    gate, val_x, val_p = fitted
    results = gate.assess(val_x, val_p)
    assert sum(u.out_of_distribution for u in results) == 10
    assert sum(u.low_confidence for u in results) == 50
    assert all((u.score >= 1) == u.cannot_assess for u in results)


def test_the_gate_stores_float32_statistics_so_its_thresholds_match_the_loaded_gate(fitted) -> None:
    gate, _, _ = fitted
    assert np.array_equal(gate.class_means, gate.class_means.astype(np.float32).astype(np.float64))
    assert np.array_equal(gate.precision, gate.precision.astype(np.float32).astype(np.float64))


def test_points_far_from_every_class_are_out_of_distribution(fitted) -> None:
    gate, val_x, _ = fitted
    far = val_x[:5] + 100.0
    confident = np.tile([[0.98, 0.01, 0.01]], (5, 1))
    for u in gate.assess(far, confident):
        assert u.out_of_distribution and not u.low_confidence and u.cannot_assess
        assert u.ood_distance > 50 and u.score == pytest.approx(u.ood_distance / gate.ood_threshold)


def test_a_typical_point_with_a_confident_prediction_passes(fitted) -> None:
    gate, _, _ = fitted
    centre = gate.class_means[1:2]
    (u,) = gate.assess(centre, np.array([[0.98, 0.01, 0.01]]))
    assert u.ood_distance == pytest.approx(0.0, abs=1e-6)
    assert not u.cannot_assess and u.score < 1
    assert u.score == pytest.approx(max(0.0, u.entropy / gate.entropy_threshold))


def test_a_uniform_prediction_is_low_confidence(fitted) -> None:
    gate, _, _ = fitted
    (u,) = gate.assess(gate.class_means[:1], np.full((1, 3), 1 / 3))
    assert u.low_confidence and not u.out_of_distribution and u.entropy == pytest.approx(1.0)
    assert u.to_dict()["low_confidence"] is True


@pytest.mark.parametrize(
    ("name", "value"),
    [("ood_quantile", 0.49), ("ood_quantile", 1.0), ("low_confidence_quantile", 0.2), ("low_confidence_quantile", 1.5)],
)
def test_quantiles_outside_half_to_one_are_refused(name: str, value: float) -> None:
    x, y = synthetic(20, seed=0)
    with pytest.raises(ValueError, match=f"{name} must be in \\[0.5, 1\\), not {value}"):
        fit_uncertainty_gate(
            train_embeddings=x,
            train_labels=y,
            val_embeddings=x,
            val_probabilities=np.full((len(x), 2), 0.5),
            **{name: value},
        )


def test_quantile_one_half_is_accepted_as_the_median() -> None:
    x, y = synthetic(20, seed=0)
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=len(x))
    gate = fit_uncertainty_gate(
        train_embeddings=x,
        train_labels=y,
        val_embeddings=x,
        val_probabilities=p,
        ood_quantile=0.5,
        low_confidence_quantile=0.5,
    )
    assert gate.entropy_threshold == np.median(normalised_entropy(p))


def test_tensors_and_summary_round_trip_through_from_bundle_parts(fitted) -> None:
    gate, val_x, val_p = fitted
    tensors = gate.tensors()
    assert tensors["class_means"].dtype == torch.float32 and tensors["precision_upper"].shape == (6 * 7 // 2,)
    summary = gate.summary()
    assert summary["method"] == METHOD
    again = UncertaintyGate.from_bundle_parts(tensors, summary)
    assert np.array_equal(again.class_means, gate.class_means)
    assert np.array_equal(again.precision, gate.precision)
    assert (again.ood_threshold, again.entropy_threshold) == (gate.ood_threshold, gate.entropy_threshold)
    assert (again.ood_quantile, again.low_confidence_quantile) == (0.99, 0.95)
    assert again.assess(val_x[:20], val_p[:20]) == gate.assess(val_x[:20], val_p[:20])


# --- the gate in a model bundle --------------------------------------------------------------------------


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=3, input_size=32)


def tiny_metadata(**extra) -> dict:
    return {"name": "tiny", "classes": ["mel", "nv", "bcc"], "preprocessing": {"input_size": 32}, **extra}


@pytest.fixture(scope="module")
def gated_bundle(fitted, tmp_path_factory) -> Path:
    """One bundle with the fitted gate, saved once (saving hashes 45 MB of weights); tests copy it."""
    gate, _, _ = fitted
    directory = tmp_path_factory.mktemp("gated") / "bundle"
    return save_bundle(
        directory, tiny_model(), tiny_metadata(uncertainty=gate.summary()), uncertainty_tensors=gate.tensors()
    )


@pytest.fixture
def bundle_copy(gated_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(gated_bundle, tmp_path / "bundle"))


def test_a_bundle_saved_with_the_gate_reloads_it_exactly(fitted, gated_bundle: Path) -> None:
    gate, _, _ = fitted
    assert (gated_bundle / UNCERTAINTY_FILE).is_file()
    bundle = load_bundle(gated_bundle)
    assert bundle.metadata.uncertainty.sha256 == sha256_of(gated_bundle / UNCERTAINTY_FILE)
    assert bundle.metadata.uncertainty.ood_threshold == gate.ood_threshold
    assert set(bundle.uncertainty_tensors) == {"class_means", "precision_upper"}
    for key, tensor in gate.tensors().items():
        assert torch.equal(bundle.uncertainty_tensors[key], tensor)
    again = UncertaintyGate.from_bundle_parts(bundle.uncertainty_tensors, bundle.metadata.uncertainty.to_json_dict())
    assert np.array_equal(again.class_means, gate.class_means)


def test_a_bundle_without_a_gate_loads_with_none(bundle_copy: Path) -> None:
    (bundle_copy / UNCERTAINTY_FILE).unlink()
    path = bundle_copy / METADATA_FILE
    metadata = json.loads(path.read_text(encoding="utf-8"))
    del metadata["uncertainty"]
    path.write_text(json.dumps(metadata), encoding="utf-8")
    assert load_bundle(bundle_copy).uncertainty_tensors is None


def test_save_bundle_refuses_gate_tensors_without_their_summary(fitted, tmp_path: Path) -> None:
    gate, _, _ = fitted
    with pytest.raises(ValueError, match="metadata\\['uncertainty'\\]"):
        save_bundle(tmp_path / "b", tiny_model(), tiny_metadata(), uncertainty_tensors=gate.tensors())
    assert not (tmp_path / "b" / UNCERTAINTY_FILE).exists()


def test_a_replaced_uncertainty_file_is_refused_naming_it(fitted, bundle_copy: Path) -> None:
    gate, _, _ = fitted
    directory = bundle_copy
    shifted = {key: tensor + 1.0 for key, tensor in gate.tensors().items()}  # a valid file, other numbers
    save_file(shifted, str(directory / UNCERTAINTY_FILE))
    with pytest.raises(BundleError, match=f"{UNCERTAINTY_FILE} does not match {METADATA_FILE}"):
        load_bundle(directory)


def test_a_flipped_byte_in_the_uncertainty_file_is_refused(bundle_copy: Path) -> None:
    directory = bundle_copy
    path = directory / UNCERTAINTY_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{UNCERTAINTY_FILE}.*damaged or was replaced"):
        load_bundle(directory)


def test_a_deleted_uncertainty_file_is_refused_naming_it(bundle_copy: Path) -> None:
    directory = bundle_copy
    (directory / UNCERTAINTY_FILE).unlink()
    with pytest.raises(BundleError, match=f"lists an uncertainty gate but has no {UNCERTAINTY_FILE}"):
        load_bundle(directory)


def test_uncertainty_result_is_a_plain_record() -> None:
    u = Uncertainty(1.2, 60.0, 50.0, 0.3, 0.75, True, False)
    assert u.cannot_assess and u.to_dict()["ood_distance"] == 60.0


def test_the_stored_upper_triangle_gives_back_the_matrix_bit_for_bit_and_older_full_matrices_still_load(fitted) -> None:
    gate, _, _ = fitted
    stored = gate.tensors()
    again = UncertaintyGate.from_bundle_parts(stored, gate.summary())
    assert np.array_equal(again.precision, gate.precision.astype(np.float32).astype(np.float64))
    full = {"class_means": stored["class_means"], "precision": torch.from_numpy(gate.precision.astype(np.float32))}
    assert np.array_equal(UncertaintyGate.from_bundle_parts(full, gate.summary()).precision, again.precision)
    with pytest.raises(ValueError, match="precision_upper holds 20 values; a 6-d embedding needs 21"):
        UncertaintyGate.from_bundle_parts({**stored, "precision_upper": stored["precision_upper"][:20]}, gate.summary())


def test_flag_rates_count_each_flag_and_their_union_by_hand() -> None:
    def result(ood: bool, low: bool) -> Uncertainty:
        return Uncertainty(1.0, 0.0, 1.0, 0.0, 1.0, out_of_distribution=ood, low_confidence=low)

    # four images: OOD only, low confidence only, both, neither -> OOD 2/4, low 2/4, either 3/4
    assessed = [result(True, False), result(False, True), result(True, True), result(False, False)]
    assert flag_rates(assessed) == {"out_of_distribution": 0.5, "low_confidence": 0.5, "cannot_assess": 0.75}
