"""ONNX export and the onnxruntime variants: parity with PyTorch, refusal of stale, damaged or uncalibrated files.

Exporting with a refit (``skintriage export --variant``) is tested on a tiny generated bundle in
``tests/training/test_deployment.py``; here the file-level pieces run on the bundled model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from typer.testing import CliRunner

from skintriage.cli import app
from skintriage.common.errors import ArgumentError
from skintriage.common.extras import MissingExtraError
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.sources import get_source
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
from skintriage.inference.variants import REFERENCE, VARIANTS, VariantError
from skintriage.model.bundle import METADATA_FILE, Bundle, load_bundle, read_metadata, save_bundle, write_metadata
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
    """A copy of the bundled model's folder without its variants, with a freshly exported model.onnx (once)."""
    directory = copy_bundle(tmp_path_factory.mktemp("onnx") / "bundle")
    export_onnx(load_bundle(directory))
    return directory


def copy_bundle(directory: Path, *, with_onnx_from: Path | None = None) -> Path:
    """The bundled model as a plain float32 bundle: no ONNX files, no variant records."""
    shutil.copytree(DEFAULT_BUNDLE, directory, ignore=shutil.ignore_patterns("*.onnx"))
    write_metadata(directory, read_metadata(directory).model_copy(update={"variants": None, "default_variant": None}))
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
        OnnxRunner.load(onnx_path, bundle=load_bundle(directory))
    message = str(raised.value)
    assert str(onnx_path) in message and "skintriage export" in message


def test_a_truncated_onnx_file_is_refused_naming_the_file(exported: Path, tmp_path: Path) -> None:
    directory = copy_bundle(tmp_path / "truncated")
    data = (exported / ONNX_FILE).read_bytes()
    (directory / ONNX_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxModelError, match="not a readable ONNX model") as raised:
        OnnxRunner.load(directory / ONNX_FILE, bundle=load_bundle(directory))
    assert str(directory / ONNX_FILE) in str(raised.value) and "truncated" in str(raised.value)


def test_an_onnx_file_not_written_by_skintriage_export_is_refused(exported: Path, tmp_path: Path) -> None:
    directory = copy_bundle(tmp_path / "foreign")
    model = onnx.load(str(exported / ONNX_FILE))
    del model.metadata_props[:]
    onnx.save(model, str(directory / ONNX_FILE))
    with pytest.raises(OnnxModelError, match="not written by `skintriage export`"):
        OnnxRunner.load(directory / ONNX_FILE, bundle=load_bundle(directory))


# --- the variant as users get it ---------------------------------------------------------------------------


def test_an_onnx_file_without_its_own_calibration_is_refused_by_name(exported: Path) -> None:
    """An exported file alone is not a variant: its thresholds must be fitted at its precision first."""
    with pytest.raises(VariantError, match="holds no calibration for the variant onnx-float32") as raised:
        Predictor.load(exported, variant="onnx-float32")
    assert f"skintriage export --checkpoint {exported} --variant onnx-float32" in str(raised.value)
    assert Predictor.load(exported).variant == REFERENCE  # "auto" on a bundle without variants: float32, quietly


@pytest.fixture(scope="module")
def shipped() -> Bundle:
    """The bundled model as it ships; skipped where its default variant's file is not in the checkout."""
    metadata = read_metadata(DEFAULT_BUNDLE)
    if metadata.default_variant in (None, REFERENCE):
        pytest.skip("the bundled model's default variant is PyTorch float32")
    spec = VARIANTS[metadata.default_variant]
    if spec.file is not None and not (DEFAULT_BUNDLE / spec.file).is_file():
        pytest.skip(f"{DEFAULT_BUNDLE / spec.file} is not in this checkout")
    return load_bundle(DEFAULT_BUNDLE)


def test_the_bundled_model_runs_its_recorded_default_variant_with_that_variants_thresholds(shipped: Bundle) -> None:
    predictor = Predictor.load()
    name = shipped.metadata.default_variant
    entry = shipped.metadata.variants[name]
    assert predictor.variant == name and predictor.backend == VARIANTS[name].engine
    assert predictor.bundle.temperature == entry.calibration.temperature
    assert predictor.policy.referral_threshold == entry.calibration.referral_threshold
    assert entry.admissible and entry.parity["sets"]["validation"]["level_agreement"] >= 0.995


def test_a_changed_or_damaged_default_file_is_refused_by_name_and_auto_falls_back_with_a_warning(
    shipped: Bundle, tmp_path: Path
) -> None:
    name = shipped.metadata.default_variant
    directory = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "changed"))
    path = directory / VARIANTS[name].file
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(VariantError, match="does not match") as raised:
        Predictor.load(directory, variant=name)
    assert str(path) in str(raised.value) and f"--variant {name}" in str(raised.value)
    with pytest.warns(UserWarning, match=f"instead of the default variant {name}"):
        predictor = Predictor.load(directory)
    assert predictor.variant == REFERENCE and predictor.predict(lesion(0)).referral.level
    assert predictor.bundle.temperature == shipped.metadata.calibration.temperature  # float32's own thresholds


def test_an_unknown_variant_is_refused_naming_the_registered_ones(exported: Path) -> None:
    with pytest.raises(ArgumentError, match="unknown variant 'tensorrt'; choose from torch-float32, torch-bfloat16"):
        Predictor.load(exported, variant="tensorrt")


def test_predictions_and_saliency_agree_between_the_float32_variants(shipped: Bundle) -> None:
    on_torch = Predictor.load(variant=REFERENCE)
    on_default = Predictor.load()
    if on_default.variant != "onnx-float32":
        pytest.skip(f"the default variant is {on_default.variant}")
    images = [lesion(seed) for seed in range(4)]
    for a, b in zip(on_torch.predict_batch(images), on_default.predict_batch(images), strict=True):
        assert a.class_call == b.class_call
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) <= 1e-3
    plain = on_default.predict(images[0])
    explained = on_default.predict(images[0], with_saliency=True)  # Grad-CAM on PyTorch, probabilities on ONNX
    assert explained.heatmap is not None and explained.referral.level == plain.referral.level
    assert explained.probabilities == plain.probabilities


# --- the export command --------------------------------------------------------------------------------


def test_export_command_refuses_an_unknown_variant() -> None:
    result = runner.invoke(app, ["export", "--checkpoint", str(DEFAULT_BUNDLE), "--variant", "tflite"])
    assert result.exit_code == 1 and "unknown variant 'tflite'" in " ".join(result.output.split())


# --- without the [onnx] extra ---------------------------------------------------------------------------

ONNX_PACKAGES = ("onnxruntime", "onnx", "onnxscript")  # pyproject's [project.optional-dependencies] onnx


def uninstall(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail for this test, as if the package were not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_the_default_path_predicts_without_the_onnx_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh install without the [onnx] extra: the bundled model's ONNX default cannot run, so float32 runs."""
    uninstall(monkeypatch, *ONNX_PACKAGES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fallback's warning, when the default is an ONNX variant
        predictor = Predictor.load()
    assert predictor.backend == "torch" and predictor.predict(lesion(0)).referral.level


def test_an_onnx_variant_without_onnxruntime_names_the_extra(shipped: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    name = shipped.metadata.default_variant
    if VARIANTS[name].engine != "onnxruntime":
        pytest.skip(f"the default variant {name} needs no onnxruntime")
    uninstall(monkeypatch, "onnxruntime")
    with pytest.raises(MissingExtraError, match="the ONNX backend needs onnxruntime") as raised:
        Predictor.load(variant=name)
    assert "pip install 'skintriage[onnx]'" in str(raised.value)
    with pytest.warns(UserWarning, match=r"instead of the default variant .*skintriage\[onnx\]"):
        assert Predictor.load().variant == REFERENCE


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_export_command_without_the_exporter_names_the_extra(
    missing: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = copy_bundle(tmp_path / "cli")
    uninstall(monkeypatch, missing)
    result = runner.invoke(app, ["export", "--checkpoint", str(directory), "--variant", "onnx-float32"])
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


def test_the_default_and_float32_predictors_agree_on_real_images(shipped: Bundle) -> None:
    """Each with its own thresholds, as users get them: the same level on two images of each ISIC diagnosis
    and four DermNet photos (the validation-wide agreement is in model.json's parity report)."""
    root = shared_data(ISIC_ROOT)
    frame = get_source("isic2018_test").load(root).frame
    chosen = frame.groupby("diagnosis", sort=True).head(2)  # two images of each diagnosis
    files = [root / image for image in chosen["image"]]
    dermnet = shared_data("dermnet_clinical") / "images"
    files += sorted(p for p in dermnet.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:4]
    on_torch = list(Predictor.load(variant=REFERENCE).predict_files(files, batch_size=8))
    on_default = list(Predictor.load().predict_files(files, batch_size=8))
    assert len(on_torch) == len(on_default) == len(files)
    agreeing = sum(a.referral.level == b.referral.level for a, b in zip(on_torch, on_default, strict=True))
    assert agreeing >= len(files) - 1, f"{agreeing} of {len(files)} levels agree"


def test_onnx_runtime_telemetry_is_off_and_leaves_no_file(tmp_path: Path) -> None:
    """ONNX Runtime's Linux builds send usage telemetry by default and keep a session file in the temporary
    folder; importing skintriage turns that off before onnxruntime loads (the demo sends no analytics)."""
    script = (
        "import os, skintriage; from skintriage.inference.predictor import Predictor; "
        "p = Predictor.load(variant='onnx-float32'); print(os.environ['ORT_DISABLE_TELEMETRY'], p.variant)"
    )
    if (read_metadata(DEFAULT_BUNDLE).variants or {}).get("onnx-float32") is None:
        pytest.skip("the bundled model has no onnx-float32 variant")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"} | {"TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "onnx-float32"]
    assert not [p.name for p in tmp_path.iterdir() if not p.name.startswith("torchinductor_")]  # torch's cache
