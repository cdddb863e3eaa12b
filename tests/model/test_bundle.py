"""Bundles and training state: round trips (float32 and float16), the metadata written, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from skintriage import __version__
from skintriage.data.taxonomy import TAXONOMY_VERSION
from skintriage.model.bundle import (
    BUNDLE_FORMAT,
    METADATA_FILE,
    WEIGHTS_FILE,
    BundleError,
    load_bundle,
    load_training_state,
    round_to_bundle,
    save_bundle,
    save_training_state,
    sha256_of,
)
from skintriage.model.registry import create_model

CLASSES = ["mel", "nv", "bcc"]
INPUT_SIZE = 32


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A 3-class ResNet-18 at 32 px whose weights and BatchNorm statistics are all random (nothing zero-initialised).

    A fresh model has zero-initialised residual gammas and a near-zero head, so its outputs are nearly
    constant and would hide a lost or mis-rounded tensor; random everything makes every tensor matter.
    """
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=len(CLASSES), input_size=INPUT_SIZE)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.1)
    return model.eval()


def fixed_input() -> torch.Tensor:
    return torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(123))


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(fixed_input())


def metadata(**extra) -> dict:
    return {"name": "tiny", "classes": list(CLASSES), "preprocessing": {"input_size": INPUT_SIZE}, **extra}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return save_bundle(tmp_path / "bundle", tiny_model(), metadata())


def edit_metadata(directory: Path, **changes) -> None:
    path = directory / METADATA_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def drop_field(directory: Path, name: str) -> None:
    path = directory / METADATA_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    del data[name]
    path.write_text(json.dumps(data), encoding="utf-8")


# --- round trips -------------------------------------------------------------------------------------


def test_float32_bundle_round_trip_reproduces_weights_and_outputs_exactly(tmp_path):
    model = tiny_model()
    save_bundle(tmp_path / "b", model, metadata())
    bundle = load_bundle(tmp_path / "b")
    assert not bundle.model.training
    assert bundle.classes == CLASSES
    assert bundle.path == tmp_path / "b"
    loaded = bundle.model.state_dict()
    for key, tensor in model.state_dict().items():
        assert loaded[key].dtype == tensor.dtype
        assert torch.equal(loaded[key], tensor), key
    assert torch.equal(outputs(bundle.model), outputs(model))


def test_half_bundle_stores_float16_and_loads_back_as_float32(tmp_path):
    save_bundle(tmp_path / "b", tiny_model(), metadata(), half=True)
    stored = load_file(str(tmp_path / "b" / WEIGHTS_FILE))
    assert stored["fc.weight"].dtype == torch.float16
    assert stored["bn1.num_batches_tracked"].dtype == torch.int64  # integer buffers are not rounded
    loaded = load_bundle(tmp_path / "b").model.state_dict()
    assert loaded["fc.weight"].dtype == torch.float32
    assert loaded["bn1.num_batches_tracked"].dtype == torch.int64


def test_half_bundle_of_a_rounded_model_gives_exactly_the_in_memory_outputs(tmp_path):
    model = tiny_model()
    unrounded = outputs(model)
    round_to_bundle(model, half=True)
    rounded = outputs(model)
    assert not torch.equal(rounded, unrounded)  # float16 rounding does change the outputs ...
    save_bundle(tmp_path / "b", model, metadata(), half=True)
    assert torch.equal(outputs(load_bundle(tmp_path / "b").model), rounded)  # ... so metrics must use the rounded model


def test_round_to_bundle_without_half_leaves_weights_untouched():
    model = tiny_model()
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    assert round_to_bundle(model, half=False) is model
    assert all(torch.equal(model.state_dict()[key], tensor) for key, tensor in before.items())


def test_metadata_records_architecture_classes_versions_and_weights_hash(bundle_dir):
    written = json.loads((bundle_dir / METADATA_FILE).read_text(encoding="utf-8"))
    assert written["format_version"] == BUNDLE_FORMAT
    assert written["architecture"] == {"name": "resnet18", "num_classes": 3, "stem": "small", "pretrained": "none"}
    assert written["classes"] == CLASSES
    assert written["taxonomy_version"] == TAXONOMY_VERSION
    assert written["weights_dtype"] == "float32"
    assert written["weights_sha256"] == sha256_of(bundle_dir / WEIGHTS_FILE)
    assert len(written["weights_sha256"]) == 64
    assert written["code_version"].startswith(__version__)
    assert written["name"] == "tiny"
    assert written["preprocessing"] == {"input_size": INPUT_SIZE}
    assert load_bundle(bundle_dir).metadata.to_json_dict() == written


def test_bundle_temperature_comes_from_calibration_and_defaults_to_one(tmp_path):
    assert load_bundle(save_bundle(tmp_path / "a", tiny_model(), metadata())).temperature == 1.0
    calibrated = save_bundle(tmp_path / "b", tiny_model(), metadata(calibration={"temperature": 1.75}))
    assert load_bundle(calibrated).temperature == 1.75


def test_save_bundle_refuses_a_class_count_that_differs_from_the_model(tmp_path):
    with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        save_bundle(tmp_path / "b", tiny_model(), metadata(classes=["mel", "nv"]))


def test_save_bundle_refuses_a_model_not_built_by_create_model(tmp_path):
    with pytest.raises(ValueError, match=r"not built by skintriage\.model\.registry\.create_model"):
        save_bundle(tmp_path / "b", torch.nn.Linear(2, 3), metadata())


# --- refusals ----------------------------------------------------------------------------------------


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(BundleError, match="is not a folder"):
        load_bundle(tmp_path / "nowhere")


def test_missing_metadata_file_is_refused(bundle_dir):
    (bundle_dir / METADATA_FILE).unlink()
    with pytest.raises(BundleError, match=f"has no {METADATA_FILE}"):
        load_bundle(bundle_dir)


def test_invalid_json_is_refused(bundle_dir):
    (bundle_dir / METADATA_FILE).write_text('{"format_version": 1,', encoding="utf-8")
    with pytest.raises(BundleError, match="is not valid JSON"):
        load_bundle(bundle_dir)


def test_json_that_is_not_an_object_is_refused(bundle_dir):
    (bundle_dir / METADATA_FILE).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(BundleError, match="must hold a JSON object"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("field", ["format_version", "architecture", "classes", "weights_sha256"])
def test_missing_required_field_is_refused_by_name(bundle_dir, field):
    drop_field(bundle_dir, field)
    with pytest.raises(BundleError, match=f"lacks the field\\(s\\) {field}"):
        load_bundle(bundle_dir)


def test_wrong_format_version_is_refused(bundle_dir):
    edit_metadata(bundle_dir, format_version=BUNDLE_FORMAT + 1)
    with pytest.raises(BundleError, match=rf"has bundle format {BUNDLE_FORMAT + 1}; .* reads format {BUNDLE_FORMAT}\."):
        load_bundle(bundle_dir)


def test_wrong_taxonomy_version_is_refused(bundle_dir):
    edit_metadata(bundle_dir, taxonomy_version="0.9")
    with pytest.raises(BundleError, match=r"trained with taxonomy '0\.9'"):
        load_bundle(bundle_dir)


def test_unknown_class_name_is_refused(bundle_dir):
    edit_metadata(bundle_dir, classes=["mel", "nv", "melanoma"])
    with pytest.raises(BundleError, match=r"classes \['melanoma'\] that are not diagnoses"):
        load_bundle(bundle_dir)


def test_unregistered_architecture_is_refused(bundle_dir):
    edit_metadata(bundle_dir, architecture={"name": "vit_huge", "num_classes": 3, "stem": "small"})
    with pytest.raises(BundleError, match="needs architecture 'vit_huge', which is not registered"):
        load_bundle(bundle_dir)


def test_missing_weights_file_is_refused(bundle_dir):
    (bundle_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match=f"has no {WEIGHTS_FILE}"):
        load_bundle(bundle_dir)


def test_tampered_weights_are_refused_by_hash(bundle_dir):
    weights = bundle_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"does not match model\.json \(SHA-256 .*damaged or was replaced"):
        load_bundle(bundle_dir)


def test_weights_that_do_not_fit_the_class_count_are_refused(bundle_dir):
    # the hash still matches the (unchanged) weights; the metadata now claims 4 classes for a 3-output head
    edit_metadata(bundle_dir, classes=[*CLASSES, "bkl"])
    with pytest.raises(BundleError, match=r"(?s)does not fit architecture .*size mismatch for fc.weight"):
        load_bundle(bundle_dir)


def test_weights_of_another_architecture_are_refused_even_with_a_matching_hash(bundle_dir, tmp_path):
    torch.manual_seed(0)
    other = create_model("mobilenet_v3_large", num_classes=3, input_size=INPUT_SIZE)
    save_bundle(tmp_path / "other", other, metadata())
    (tmp_path / "other" / WEIGHTS_FILE).replace(bundle_dir / WEIGHTS_FILE)
    edit_metadata(bundle_dir, weights_sha256=sha256_of(bundle_dir / WEIGHTS_FILE))
    with pytest.raises(BundleError, match=r"(?s)does not fit architecture .*Missing key"):
        load_bundle(bundle_dir)


def test_unreadable_weights_with_a_matching_hash_are_refused(bundle_dir):
    (bundle_dir / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    edit_metadata(bundle_dir, weights_sha256=sha256_of(bundle_dir / WEIGHTS_FILE))
    with pytest.raises(BundleError, match="is not a readable safetensors file"):
        load_bundle(bundle_dir)


# --- training state ----------------------------------------------------------------------------------


def test_training_state_round_trip_keeps_tensors_numbers_lists_and_optimizer_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    state = {
        "epoch": 7,
        "best_score": 0.625,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": [{"epoch": 1, "loss": 1.5}, {"epoch": 2, "loss": 1.25}],
        "config": {"name": "tiny", "classes": CLASSES},
        "rng": torch.get_rng_state(),
    }
    path = tmp_path / "runs" / "state.pt"
    save_training_state(path, state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]  # no leftover .tmp
    loaded = load_training_state(path)
    assert loaded["epoch"] == 7
    assert loaded["best_score"] == 0.625
    assert loaded["history"] == state["history"]
    assert loaded["config"] == state["config"]
    assert torch.equal(loaded["rng"], state["rng"])
    assert all(torch.equal(loaded["model"][key], value) for key, value in state["model"].items())
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for index, slots in state["optimizer"]["state"].items():
        assert torch.equal(loaded["optimizer"]["state"][index]["exp_avg"], slots["exp_avg"])
        assert torch.equal(loaded["optimizer"]["state"][index]["step"], slots["step"])
    # and it restores into a fresh optimizer
    fresh = torch.optim.AdamW(model.parameters(), lr=1.0)
    fresh.load_state_dict(loaded["optimizer"])
    assert fresh.param_groups[0]["lr"] == 1e-3


def test_save_training_state_replaces_the_previous_state(tmp_path):
    path = tmp_path / "state.pt"
    save_training_state(path, {"epoch": 1})
    save_training_state(path, {"epoch": 2})
    assert load_training_state(path) == {"epoch": 2}


def test_truncated_training_state_is_refused_with_advice_to_delete_it(tmp_path):
    path = tmp_path / "state.pt"
    save_training_state(path, {"epoch": 3, "weights": torch.randn(100, 100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"cannot read the training state .*delete it to start the run afresh"):
        load_training_state(path)


def test_missing_training_state_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="FileNotFoundError"):
        load_training_state(tmp_path / "absent.pt")


UNPICKLED: list[str] = []


def _record(message: str) -> str:
    UNPICKLED.append(message)
    return message


class Payload:
    """An arbitrary Python object whose unpickling would run code (here: append to UNPICKLED)."""

    def __reduce__(self):
        return (_record, ("code ran while loading",))


def test_training_state_holding_a_pickled_python_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"epoch": 1, "payload": Payload()}, path)
    UNPICKLED.clear()
    with pytest.raises(BundleError, match=r"cannot read the training state .*UnpicklingError"):
        load_training_state(path)
    assert UNPICKLED == []
