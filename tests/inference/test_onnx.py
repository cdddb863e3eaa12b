"""ONNX export and the onnxruntime backend: parity with PyTorch, refusal of stale or damaged files, backend choice."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image, ImageDraw, ImageFilter
from typer.testing import CliRunner

from skintriage.cli import app
from skintriage.common.extras import MissingExtraError
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.sources import get_source
from skintriage.inference.backend import choose_backend
from skintriage.inference.batch import bundle_dataset, loader_for
from skintriage.inference.export import export_onnx
from skintriage.inference.onnx_runner import (
    META_WEIGHTS_SHA256,
    ONNX_FILE,
    PARITY_TOLERANCE,
    OnnxModelError,
    OnnxRunner,
    parity,
)
from skintriage.inference.predictor import Predictor
from skintriage.model.bundle import METADATA_FILE, Bundle, load_bundle, save_bundle
from tests.helpers import shared_data

ISIC_ROOT = "ham10000_isic2018_224"
runner = CliRunner()


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    if not (DEFAULT_BUNDLE / METADATA_FILE).is_file():
        pytest.skip(f"no bundled model at {DEFAULT_BUNDLE}")
    return load_bundle(DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def exported(bundle: Bundle, tmp_path_factory) -> Path:
    """A copy of the bundled model's folder with a freshly exported model.onnx in it (exported once)."""
    directory = copy_bundle(tmp_path_factory.mktemp("onnx") / "bundle")
    export_onnx(load_bundle(directory))
    return directory


def copy_bundle(directory: Path, *, with_onnx_from: Path | None = None) -> Path:
    shutil.copytree(DEFAULT_BUNDLE, directory, ignore=shutil.ignore_patterns(ONNX_FILE))
    if with_onnx_from is not None:
        shutil.copyfile(with_onnx_from / ONNX_FILE, directory / ONNX_FILE)
    return directory


def pixels(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def lesion(seed: int) -> Image.Image:
    """A dark blurred oval on a skin tone: enough of a picture for the whole prediction path."""
    image = Image.new("RGB", (200, 160), (225, 180, 150))
    shade = 40 + 15 * seed
    ImageDraw.Draw(image).ellipse((60, 48, 140, 112), fill=(shade, shade // 2, shade // 3))
    return image.filter(ImageFilter.GaussianBlur(4))


# --- the exported file ----------------------------------------------------------------------------------


def test_export_writes_float32_weights_a_dynamic_batch_and_the_bundle_it_came_from(exported: Path) -> None:
    model = onnx.load(str(exported / ONNX_FILE))
    onnx.checker.check_model(model)
    record = {prop.key: prop.value for prop in model.metadata_props}
    metadata = json.loads((exported / METADATA_FILE).read_text(encoding="utf-8"))
    assert record[META_WEIGHTS_SHA256] == metadata["weights_sha256"]
    assert record["skintriage.input_size"] == str(metadata["preprocessing"]["input_size"])
    assert json.loads(record["skintriage.classes"]) == metadata["classes"]
    assert record["skintriage.opset"] == str(next(o.version for o in model.opset_import if o.domain == ""))
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["logits", "embedding"]
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param, f"{value.name}: the batch axis is not dynamic"
    float_types = {i.data_type for i in model.graph.initializer if i.data_type in (1, 10, 11, 16)}
    assert float_types == {onnx.TensorProto.FLOAT}, "weights must be exported as float32"


def test_onnx_matches_pytorch_on_generated_batches(bundle: Bundle, exported: Path) -> None:
    """Calibrated probabilities within 1e-4, the same arg-max and the same embedding, at batch sizes 1 to 32."""
    onnx_runner = OnnxRunner.load(exported / ONNX_FILE, bundle=bundle)
    size = onnx_runner.input_size
    batches = [pixels(1, size, 0), pixels(5, size, 1), pixels(32, size, 2), 3 * pixels(4, size, 3)]
    result = parity(bundle, onnx_runner, batches)
    print(f"\nONNX vs PyTorch, generated inputs: {result.summary()}")
    assert result.n_images == 42
    assert result.max_abs_probability <= PARITY_TOLERANCE
    assert result.argmax_disagreements == 0
    assert result.max_abs_logit <= 1e-3 and result.max_abs_embedding <= 1e-3


def test_the_runner_refuses_pixels_of_the_wrong_shape(bundle: Bundle, exported: Path) -> None:
    onnx_runner = OnnxRunner.load(exported / ONNX_FILE, bundle=bundle)
    with pytest.raises(ValueError, match=r"takes \(N, 3, \d+, \d+\) pixels, got \(1, 3, 64, 64\)"):
        onnx_runner(torch.zeros(1, 3, 64, 64))


# --- refusing files that do not belong to the bundle ---------------------------------------------------


def test_a_stale_onnx_file_next_to_retrained_weights_is_refused_naming_the_file(exported: Path, tmp_path: Path) -> None:
    directory = copy_bundle(tmp_path / "retrained", with_onnx_from=exported)
    old = load_bundle(directory)
    with torch.no_grad():  # "retrain": other weights, saved as a bundle over the old one; model.onnx stays
        list(old.model.parameters())[-1].add_(0.5)  # the head's bias, whatever the architecture
    save_bundle(directory, old.model, old.metadata, half=True, uncertainty_tensors=old.uncertainty_tensors)
    onnx_path = directory / ONNX_FILE
    with pytest.raises(OnnxModelError, match="is stale") as raised:
        Predictor.load(directory, backend="onnx")
    message = str(raised.value)
    assert str(onnx_path) in message and "skintriage export" in message

    with pytest.warns(UserWarning, match="is stale"):
        predictor = Predictor.load(directory, backend="auto")
    assert predictor.backend == "torch"
    assert str(onnx_path) in predictor.backend_choice.reason


def test_a_truncated_onnx_file_is_refused_naming_the_file(exported: Path, tmp_path: Path) -> None:
    directory = copy_bundle(tmp_path / "truncated")
    data = (exported / ONNX_FILE).read_bytes()
    (directory / ONNX_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxModelError, match="not a readable ONNX model") as raised:
        Predictor.load(directory, backend="onnx")
    assert str(directory / ONNX_FILE) in str(raised.value) and "truncated" in str(raised.value)

    with pytest.warns(UserWarning, match="not a readable ONNX model"):
        assert Predictor.load(directory, backend="auto").backend == "torch"


def test_an_onnx_file_whose_weights_were_altered_after_export_is_refused(exported: Path, tmp_path: Path) -> None:
    """The metadata still names the bundle's weights; the probe comparison with PyTorch catches the change."""
    directory = copy_bundle(tmp_path / "altered")
    model = onnx.load(str(exported / ONNX_FILE))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    altered = numpy_helper.to_array(biggest) * 1.5
    biggest.CopyFrom(numpy_helper.from_array(altered.astype(np.float32), biggest.name))
    onnx.save(model, str(directory / ONNX_FILE))
    with pytest.raises(OnnxModelError, match="computes something else") as raised:
        Predictor.load(directory, backend="onnx")
    assert str(directory / ONNX_FILE) in str(raised.value)


def test_an_onnx_file_not_written_by_skintriage_export_is_refused(exported: Path, tmp_path: Path) -> None:
    directory = copy_bundle(tmp_path / "foreign")
    model = onnx.load(str(exported / ONNX_FILE))
    del model.metadata_props[:]
    onnx.save(model, str(directory / ONNX_FILE))
    with pytest.raises(OnnxModelError, match="not written by `skintriage export`"):
        Predictor.load(directory, backend="onnx")


# --- choosing the backend ------------------------------------------------------------------------------


def test_backend_onnx_without_a_file_is_a_clear_error(tmp_path: Path) -> None:
    directory = copy_bundle(tmp_path / "plain")
    with pytest.raises(OnnxModelError, match="does not exist") as raised:
        Predictor.load(directory, backend="onnx")
    assert str(directory / ONNX_FILE) in str(raised.value) and "skintriage export" in str(raised.value)


def test_backend_auto_without_a_file_uses_torch_quietly(tmp_path: Path) -> None:
    directory = copy_bundle(tmp_path / "plain")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a missing file is the normal case: no warning
        predictor = Predictor.load(directory, backend="auto")
    assert predictor.backend == "torch" and predictor.backend_choice.runner is None
    assert ONNX_FILE in predictor.backend_choice.reason
    assert Predictor.load(directory).backend == "torch"  # "auto" is the default


def test_backend_auto_with_a_valid_file_measures_both_and_picks_the_faster(bundle: Bundle, exported: Path) -> None:
    choice = choose_backend(load_bundle(exported), "auto", repeats=3)
    assert set(choice.timings_ms) == {"torch", "onnx"} and all(t > 0 for t in choice.timings_ms.values())
    faster = min(choice.timings_ms, key=choice.timings_ms.get)
    assert choice.name == faster and (choice.runner is not None) == (faster == "onnx")
    print(f"\nbackend auto: {choice.name} ({choice.timings_ms} ms, batch 1, a shared machine)")


def test_an_unknown_backend_is_refused(exported: Path) -> None:
    with pytest.raises(ValueError, match="backend must be one of torch, onnx, auto"):
        Predictor.load(exported, backend="tensorrt")


def test_predictions_and_saliency_agree_between_backends(exported: Path) -> None:
    on_torch = Predictor.load(exported, backend="torch")
    on_onnx = Predictor.load(exported, backend="onnx")
    assert (on_torch.backend, on_onnx.backend) == ("torch", "onnx")
    images = [lesion(seed) for seed in range(4)]
    for a, b in zip(on_torch.predict_batch(images), on_onnx.predict_batch(images), strict=True):
        assert a.referral.level == b.referral.level and a.class_call == b.class_call
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) <= PARITY_TOLERANCE
    plain = on_onnx.predict(images[0])
    explained = on_onnx.predict(images[0], with_saliency=True)  # Grad-CAM runs on the PyTorch model
    assert explained.heatmap is not None and explained.referral.level == plain.referral.level
    assert abs(explained.malignancy_probability - plain.malignancy_probability) <= PARITY_TOLERANCE


# --- the export command --------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_command_writes_the_file_and_reports_parity(tmp_path: Path) -> None:
    directory = copy_bundle(tmp_path / "cli")
    result = runner.invoke(app, ["export", "--checkpoint", str(directory), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert (directory / ONNX_FILE).is_file()
    output = " ".join(result.output.split())
    assert "max abs difference" in output and "arg-max agreement 1.0000" in output
    assert Predictor.load(directory, backend="onnx").backend == "onnx"


def test_export_command_refuses_other_formats(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--checkpoint", str(DEFAULT_BUNDLE), "--format", "tflite"])
    assert result.exit_code == 1 and "--format must be onnx" in result.output


# --- without the [onnx] extra ---------------------------------------------------------------------------

ONNX_PACKAGES = ("onnxruntime", "onnx", "onnxscript")  # pyproject's [project.optional-dependencies] onnx


def uninstall(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail for this test, as if the package were not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_the_default_path_predicts_without_the_onnx_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    directory = copy_bundle(tmp_path / "plain")  # as the bundled model ships: no model.onnx
    uninstall(monkeypatch, *ONNX_PACKAGES)
    predictor = Predictor.load(directory)
    assert predictor.backend == "torch" and predictor.predict(lesion(0)).referral.level


def test_backend_onnx_without_onnxruntime_names_the_extra(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uninstall(monkeypatch, "onnxruntime")
    with pytest.raises(MissingExtraError, match="the ONNX backend needs onnxruntime") as raised:
        Predictor.load(exported, backend="onnx")
    assert "pip install 'skintriage[onnx]'" in str(raised.value)


def test_backend_auto_without_onnxruntime_warns_and_uses_torch(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uninstall(monkeypatch, "onnxruntime")
    with pytest.warns(UserWarning, match=r"using the PyTorch model: .*skintriage\[onnx\]"):
        predictor = Predictor.load(exported, backend="auto")
    assert predictor.backend == "torch" and "skintriage[onnx]" in predictor.backend_choice.reason


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_export_command_without_the_exporter_names_the_extra(
    missing: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = copy_bundle(tmp_path / "cli")
    uninstall(monkeypatch, missing)
    result = runner.invoke(app, ["export", "--checkpoint", str(directory)])
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "error: skintriage export" in output and f"needs {missing}," in output
    assert "pip install 'skintriage[onnx]'" in output and not (directory / ONNX_FILE).exists()


# --- real data -----------------------------------------------------------------------------------------


def test_onnx_matches_pytorch_on_every_image_of_the_isic2018_test_set(bundle: Bundle, exported: Path) -> None:
    """All 1,512 official test images (the 1,511 scored and ISIC_0035068), preprocessed as evaluation does."""
    root = shared_data(ISIC_ROOT)
    manifest = get_source("isic2018_test").load(root).with_images()
    loader = loader_for(bundle_dataset(bundle, manifest), batch_size=64)
    result = parity(bundle, OnnxRunner.load(exported / ONNX_FILE, bundle=bundle), (x for x, _, _ in loader))
    print(f"\nONNX vs PyTorch, ISIC 2018 Task 3 test set: {result.summary()}")
    assert result.n_images == len(manifest) >= 1511
    assert result.max_abs_probability <= PARITY_TOLERANCE
    assert result.argmax_disagreements == 0


def test_onnx_and_torch_predictors_give_the_same_referral_on_real_images(exported: Path) -> None:
    root = shared_data(ISIC_ROOT)
    frame = get_source("isic2018_test").load(root).frame
    chosen = frame.groupby("diagnosis", sort=True).head(2)  # two images of each diagnosis
    files = [root / image for image in chosen["image"]]
    dermnet = shared_data("dermnet_clinical") / "images"
    files += sorted(p for p in dermnet.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:4]
    on_torch = list(Predictor.load(exported, backend="torch").predict_files(files, batch_size=8))
    on_onnx = list(Predictor.load(exported, backend="onnx").predict_files(files, batch_size=8))
    assert len(on_torch) == len(on_onnx) == len(files)
    for a, b in zip(on_torch, on_onnx, strict=True):
        assert a.file == b.file
        assert a.referral.level == b.referral.level, a.file
        assert [r.rule for r in a.referral.reasons] == [r.rule for r in b.referral.reasons], a.file
        assert a.class_call == b.class_call, a.file
        assert abs(a.malignancy_probability - b.malignancy_probability) <= PARITY_TOLERANCE, a.file
