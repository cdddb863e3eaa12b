"""Model bundles and training state on disk.

A **bundle** is what the demo, ``skintriage predict`` and ``skintriage evaluate`` load: a folder with

* ``model.safetensors``: the weights (safetensors holds tensors only, so loading runs no code);
* ``model.json``: everything needed to use and judge them: architecture, class names, taxonomy
  version, preprocessing (input size, normalisation, watermark-masked sources), calibration
  temperature, referral threshold, training data (sources, licences, counts), validation and test
  metrics, the code version, and the SHA-256 of the weights file;
* optionally ``uncertainty.safetensors`` (the uncertainty gate's statistics) and
  ``acquisition.safetensors`` (the dermoscopic-or-clinical classifier), each hashed in ``model.json``.

:func:`load_bundle` checks the format version, the taxonomy version, the class names, the
architecture and the weights' hash before building the model, and refuses a bundle that fails any
check with a message saying which and why: a model whose outputs are silently read in the wrong class
order would still produce confident-looking probabilities.

Bundled weights may be stored as float16 (``save_bundle(..., half=True)``) to halve the size (a
ResNet-18 is 45 MB in float32, 22 MB in float16); they are cast back to float32 on load, and every
metric in the bundle is computed from the weights *as stored*, so re-evaluating reproduces them.

**Training state** (for resuming) is a separate file written with ``torch.save`` after every epoch,
atomically (write, then rename), so a run killed mid-write keeps the previous state. It holds only
tensors, numbers, strings, lists and dicts and is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from skintriage import __version__
from skintriage.common.atomic import atomic_path, atomic_write_text
from skintriage.common.errors import BundleError
from skintriage.data.taxonomy import DIAGNOSES, TAXONOMY_VERSION
from skintriage.model.metadata import (
    FILE_FIELDS,
    AcquisitionClassifierSummary,
    BundleMetadata,
    ModelDescription,
    UncertaintySummary,
    validation_problems,
)
from skintriage.model.registry import SkinClassifier, create_model, list_models

BUNDLE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
UNCERTAINTY_FILE = "uncertainty.safetensors"  # the uncertainty gate's class means and precision (optional)
ACQUISITION_FILE = "acquisition.safetensors"  # the acquisition classifier's standardisation and weights (optional)
METADATA_FILE = "model.json"


@dataclass
class Bundle:
    model: SkinClassifier
    metadata: BundleMetadata
    path: Path
    uncertainty_tensors: dict[str, torch.Tensor] | None = None
    acquisition_tensors: dict[str, torch.Tensor] | None = None  # dermoscopic-or-clinical classifier (optional)

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.classes)

    @property
    def temperature(self) -> float:
        calibration = self.metadata.calibration
        return 1.0 if calibration is None else calibration.temperature


def code_version() -> str:
    """Package version plus the git commit when running from a checkout (``0.1.0+g3a85dda``)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" if commit else __version__


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_state_dict(model: nn.Module, *, half: bool) -> dict[str, torch.Tensor]:
    """The weights exactly as a bundle stores them (float tensors optionally rounded to float16)."""
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        state[key] = tensor.half() if half and tensor.is_floating_point() else tensor
    return state


def round_to_bundle(model: nn.Module, *, half: bool) -> nn.Module:
    """Round ``model``'s weights in place to what :func:`save_bundle` will store, so metrics match the file."""
    if half:
        rounded = {
            key: tensor.float() if tensor.is_floating_point() else tensor
            for key, tensor in bundle_state_dict(model, half=True).items()
        }
        model.load_state_dict(rounded)
    return model


def save_bundle(
    directory: Path,
    model: SkinClassifier,
    metadata: ModelDescription | Mapping[str, Any],
    *,
    half: bool = False,
    uncertainty_tensors: dict[str, torch.Tensor] | None = None,
    acquisition_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``; returns the folder.

    ``metadata`` is the model's description (a :class:`ModelDescription`, a loaded bundle's
    :class:`BundleMetadata`, or the same as a dict); the fields that describe the files (format version,
    architecture, versions, the weights' dtype and hash) are written here and never taken from it.
    ``uncertainty_tensors`` (the uncertainty gate's statistics) go to ``uncertainty.safetensors``, whose
    hash is recorded under ``uncertainty`` next to the gate's thresholds; ``acquisition_tensors`` (the
    acquisition classifier) likewise to ``acquisition.safetensors``, hashed under ``acquisition_classifier``.
    """
    if not isinstance(model, SkinClassifier):
        raise ValueError(f"the model was not built by skintriage.model.registry.create_model ({type(model).__name__})")
    described = metadata.to_json_dict() if isinstance(metadata, ModelDescription) else dict(metadata)
    described = {key: value for key, value in described.items() if key not in FILE_FIELDS}
    try:
        description = ModelDescription.model_validate(described)
    except ValidationError as error:
        raise ValueError(f"bundle metadata: {validation_problems(error)}") from None
    config = model.config
    if len(description.classes) != config.num_classes:
        raise ValueError(f"{len(description.classes)} class names for a model with {config.num_classes} outputs")
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(bundle_state_dict(model, half=half), str(tmp), metadata={"format": "pt"})
    for field, tensors, file in (
        ("uncertainty", uncertainty_tensors, UNCERTAINTY_FILE),
        ("acquisition_classifier", acquisition_tensors, ACQUISITION_FILE),
    ):
        if tensors is not None:
            description = _save_tensors(directory / file, tensors, description, field)
    full = BundleMetadata.model_validate(
        {
            **description.to_json_dict(),
            "format_version": BUNDLE_FORMAT,
            "architecture": {
                "name": config.name,
                "num_classes": config.num_classes,
                "stem": config.stem,
                "pretrained": config.pretrained or "none",  # the weights training started from
            },
            "taxonomy_version": TAXONOMY_VERSION,
            "code_version": code_version(),
            "weights_dtype": "float16" if half else "float32",
            "weights_sha256": sha256_of(weights),
        }
    )
    write_metadata(directory, full)
    return directory


def write_metadata(directory: Path, metadata: BundleMetadata) -> Path:
    """Rewrite a bundle's ``model.json`` (atomically) without touching its tensor files; returns the file.

    For sections fitted after the weights (deployment variants): the weights' hash is the caller's to keep.
    """
    text = json.dumps(metadata.to_json_dict(), indent=2, default=_json_default) + "\n"
    path = Path(directory) / METADATA_FILE
    atomic_write_text(path, text)
    return path


def _save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], description: ModelDescription, field: str
) -> ModelDescription:
    """Write a bundle's extra tensor file; returns ``description`` with its hash in ``description.<field>``."""
    summary = getattr(description, field)
    if summary is None:
        raise ValueError(f"{field} tensors need their summary (thresholds, classes) in metadata['{field}']")
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    hashed = summary.model_copy(update={"sha256": sha256_of(path)})
    return description.model_copy(update={field: hashed})


def _json_default(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in model.json")


def read_metadata(directory: Path) -> BundleMetadata:
    """``model.json`` of a bundle, checked field by field and for the versions this code understands."""
    directory = Path(directory)
    path = directory / METADATA_FILE
    if not directory.is_dir():
        raise BundleError(f"model bundle {directory} is not a folder (expected {METADATA_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"model bundle {directory} has no {METADATA_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path} must hold a JSON object")
    # first, before the fields: another format may have other fields, and the version says what to do about it
    if "format_version" in raw and raw["format_version"] != BUNDLE_FORMAT:
        raise BundleError(
            f"{path} has bundle format {raw['format_version']!r}; this version of skintriage reads format "
            f"{BUNDLE_FORMAT}. Use the skintriage version that wrote it ({raw.get('code_version', 'unknown')})."
        )
    try:
        metadata = BundleMetadata.model_validate(raw)
    except ValidationError as error:
        raise BundleError(f"{path}: {validation_problems(error)}") from None
    if metadata.taxonomy_version != TAXONOMY_VERSION:
        raise BundleError(
            f"{path} was trained with taxonomy {metadata.taxonomy_version!r}, this code has {TAXONOMY_VERSION!r}: "
            "its class names may mean something else here. Retrain, or use the matching skintriage version."
        )
    unknown = [name for name in metadata.classes if name not in DIAGNOSES]
    if unknown:
        raise BundleError(f"{path} lists classes {unknown} that are not diagnoses of taxonomy {TAXONOMY_VERSION}")
    name = metadata.architecture.name
    if name not in list_models():
        raise BundleError(f"{path} needs architecture {name!r}, which is not registered ({', '.join(list_models())})")
    return metadata


def load_bundle(directory: Path | str, *, device: str | torch.device = "cpu") -> Bundle:
    """Load and check a bundle; the model comes back in eval mode, float32, on ``device``."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"model bundle {directory} has no {WEIGHTS_FILE}")
    digest = sha256_of(weights)
    if digest != metadata.weights_sha256:
        raise BundleError(
            f"{weights} does not match {METADATA_FILE} (SHA-256 {digest[:12]}..., expected "
            f"{metadata.weights_sha256[:12]}...): the file is damaged or was replaced"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise BundleError(f"{weights} is not a readable safetensors file: {error}") from None
    architecture = metadata.architecture
    model = create_model(
        architecture.name,
        num_classes=len(metadata.classes),
        input_size=metadata.preprocessing.input_size,
        stem=architecture.stem,
    )
    # what training started from, kept so that re-saving the bundle (refitted gates) does not lose it
    model.config = replace(model.config, pretrained=architecture.pretrained)
    state = {key: tensor.float() if tensor.is_floating_point() else tensor for key, tensor in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BundleError(f"{weights} does not fit architecture {architecture.to_json_dict()}: {error}") from None
    return Bundle(
        model.to(device).eval(),
        metadata,
        directory,
        _load_tensors(directory, metadata.uncertainty, UNCERTAINTY_FILE, "an uncertainty gate"),
        _load_tensors(directory, metadata.acquisition_classifier, ACQUISITION_FILE, "an acquisition classifier"),
    )


def _load_tensors(
    directory: Path, summary: UncertaintySummary | AcquisitionClassifierSummary | None, file: str, what: str
) -> dict[str, torch.Tensor] | None:
    """An extra tensor file described (with its hash) by ``summary``; ``None`` when the bundle has no such part."""
    if summary is None:
        return None
    path = directory / file
    if summary.sha256 is None:
        raise BundleError(f"{directory / METADATA_FILE}: the summary of {what} lacks the sha256 of {file}")
    if not path.is_file():
        raise BundleError(f"model bundle {directory} lists {what} but has no {file}")
    if sha256_of(path) != summary.sha256:
        raise BundleError(
            f"{path} does not match {METADATA_FILE} (SHA-256 differs): the file is damaged or was replaced"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise BundleError(f"{path} is not a readable safetensors file: {error}") from None


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically write the resumable training state (see the module docstring)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which and what to do
        raise BundleError(
            f"cannot read the training state {path} ({type(error).__name__}: {error}); "
            "delete it to start the run afresh"
        ) from None
