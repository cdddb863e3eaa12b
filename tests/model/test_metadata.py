"""``model.json`` as typed records: the bundled file reads and writes back unchanged, a malformed one is refused by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.model.bundle import METADATA_FILE, BundleError, load_bundle, read_metadata, save_bundle
from skintriage.model.metadata import BundleMetadata, ModelDescription
from skintriage.model.registry import create_model

BUNDLED_JSON = DEFAULT_BUNDLE / METADATA_FILE
needs_bundle = pytest.mark.skipif(not BUNDLED_JSON.is_file(), reason=f"no bundled model at {DEFAULT_BUNDLE}")


def as_written(metadata: ModelDescription) -> str:
    """``model.json``'s text for ``metadata``, formatted as ``save_bundle`` writes it."""
    return json.dumps(metadata.to_json_dict(), indent=2) + "\n"


@needs_bundle
def test_the_bundled_model_json_reads_and_writes_back_byte_for_byte() -> None:
    text = BUNDLED_JSON.read_text(encoding="utf-8")
    metadata = BundleMetadata.model_validate_json(text)
    assert as_written(metadata) == text
    assert metadata.preprocessing.input_size == 160 and metadata.architecture.name == "efficientnet_lite0"
    assert metadata.calibration.by_acquisition["clinical"].fallback is None  # an explicit null stays written


@needs_bundle
def test_saving_the_loaded_bundle_again_gives_the_same_model_json(tmp_path: Path) -> None:
    bundle = load_bundle(DEFAULT_BUNDLE)
    save_bundle(
        tmp_path,
        bundle.model,
        bundle.metadata,
        half=bundle.metadata.weights_dtype == "float16",
        uncertainty_tensors=bundle.uncertainty_tensors,
        acquisition_tensors=bundle.acquisition_tensors,
    )
    original = json.loads(BUNDLED_JSON.read_text(encoding="utf-8"))
    again = json.loads((tmp_path / METADATA_FILE).read_text(encoding="utf-8"))
    assert list(again) == list(original)  # the same fields in the same order
    del original["code_version"], again["code_version"]  # the only field that says which code wrote the file
    assert again == original  # weights and tensor files included: their hashes are the same


def test_a_description_round_trips_through_json_losslessly() -> None:
    description = ModelDescription.model_validate(
        {
            "name": "tiny",
            "classes": ["mel", "nv"],
            "preprocessing": {"input_size": 32, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}},
            "training": {"config": {"model": "resnet18", "classes": None}, "best_epoch": 2},
            "calibration": {
                "temperature": 1.5,
                "referral_threshold": 0.2,
                "urgent": {"threshold": 0.7},
                "by_acquisition": {"clinical": {"temperature": 2.0, "referral_threshold": 0.3, "fallback": None}},
            },
            "decision": {"rule": "argmax"},
            "metrics": {"validation": {"accuracy": 0.5, "ci95": {"accuracy": [0.4, 0.6]}}},
        }
    )
    again = ModelDescription.model_validate_json(as_written(description))
    assert again == description
    assert as_written(again) == as_written(description)
    assert "uncertainty" not in again.to_json_dict()  # a section never set is not written as null


def bundled_with(tmp_path: Path, edit) -> Path:
    """A bundle folder holding the bundled ``model.json`` after ``edit(data)``."""
    data = json.loads(BUNDLED_JSON.read_text(encoding="utf-8"))
    edit(data)
    (tmp_path / METADATA_FILE).write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


@needs_bundle
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: data.pop("weights_sha256"), r"lacks the field\(s\) weights_sha256"),
        (lambda data: data["preprocessing"].pop("input_size"), r"lacks the field\(s\) preprocessing\.input_size"),
        (lambda data: data.update(classes="mel"), r"classes: Input should be a valid list"),
        (
            lambda data: data["preprocessing"].update(input_size="large"),
            r"preprocessing\.input_size: Input should be a valid integer",
        ),
        (
            lambda data: data["calibration"]["by_acquisition"]["clinical"]["urgent"].update(threshold=[0.5]),
            r"calibration\.by_acquisition\.clinical\.urgent\.threshold: Input should be a valid number",
        ),
        (
            lambda data: data["calibration"].update(referal_threshold=0.1),
            r"calibration\.referal_threshold: unknown field",
        ),
        (lambda data: data.update(colour="red"), r"colour: unknown field"),
        (lambda data: data["architecture"].update(stem="tiny"), r"architecture\.stem: Input should be"),
    ],
    ids=[
        "missing",
        "missing-nested",
        "wrong-type",
        "wrong-type-nested",
        "wrong-type-deep",
        "extra-nested",
        "extra",
        "bad-literal",
    ],
)
def test_a_malformed_model_json_is_refused_naming_the_file_and_the_field(tmp_path: Path, edit, message: str) -> None:
    directory = bundled_with(tmp_path, edit)
    with pytest.raises(BundleError, match=message) as error:
        read_metadata(directory)
    assert str(directory / METADATA_FILE) in str(error.value)


def test_save_bundle_refuses_a_malformed_description_naming_the_field(tmp_path: Path) -> None:
    model = create_model("resnet18", num_classes=2, input_size=32)
    with pytest.raises(ValueError, match=r"calibration\.temprature: unknown field"):
        save_bundle(
            tmp_path,
            model,
            {"classes": ["mel", "nv"], "preprocessing": {"input_size": 32}, "calibration": {"temprature": 2}},
        )
    assert not (tmp_path / METADATA_FILE).exists()
