"""The engines and precisions a bundle can run at ("variants"), and the forward pass of each.

A variant is one way of computing the same network's logits and embedding: PyTorch in float32 (the
reference: the bundle's top-level calibration was fitted on its outputs, and Grad-CAM always runs on
it), PyTorch under bfloat16 autocast, or an exported ONNX Runtime file in float32 or int8. Each is a
registry entry below: the facts of a variant live on its entry, not in branches elsewhere.

Precision moves the outputs: int8 weights and activations, or bfloat16's 8-bit mantissa, shift
calibrated probabilities by up to a few 1e-2, and a referral threshold fitted in float32 then no
longer has the sensitivity it was chosen for. A variant other than the reference is therefore usable
only when the bundle's ``model.json`` holds *its own* calibration (``variants.<name>``: temperature,
referral and urgent thresholds, per-acquisition calibration and uncertainty thresholds, all fitted on
validation outputs computed at that precision by ``skintriage export --variant``).
:func:`calibrated_at` swaps those sections in, and refuses a variant the bundle was not calibrated for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from skintriage.common.errors import ArgumentError
from skintriage.inference.batch import forward
from skintriage.model.bundle import METADATA_FILE, Bundle, BundleError, sha256_of

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # pixels -> (logits, embedding), float32
REFERENCE = "torch-float32"


class VariantError(BundleError):
    """A variant the bundle has no calibration or no valid file for; the message names both and the fix."""


@dataclass(frozen=True)
class VariantSpec:
    """A registered variant: how it computes and, for exported ones, the file it reads from the bundle folder."""

    name: str
    engine: str  # "torch" or "onnxruntime" (model.json's ``variants.<name>.engine``)
    precision: str  # "float32", "bfloat16" or "int8"
    file: str | None  # the exported file in the bundle folder; None: the PyTorch weights
    summary: str

    def export_hint(self, bundle: Bundle) -> str:
        return f"`skintriage export --checkpoint {bundle.path} --variant {self.name}`"


VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec(REFERENCE, "torch", "float32", None, "PyTorch, float32 (the reference)"),
        VariantSpec("torch-bfloat16", "torch", "bfloat16", None, "PyTorch under bfloat16 autocast"),
        VariantSpec("onnx-float32", "onnxruntime", "float32", "model.onnx", "ONNX Runtime, float32"),
        VariantSpec(
            "onnx-int8",
            "onnxruntime",
            "int8",
            "model.int8.onnx",
            "ONNX Runtime, int8 static quantisation (QDQ; per-channel int8 weights, uint8 activations whose "
            "ranges were measured on training images)",
        ),
    )
}


def variant_spec(name: str) -> VariantSpec:
    """The registry entry of ``name``; :class:`ArgumentError` naming the registered ones otherwise."""
    if name not in VARIANTS:
        raise ArgumentError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]


def calibrated_at(bundle: Bundle, name: str) -> Bundle:
    """``bundle`` with the calibration and uncertainty thresholds fitted at variant ``name`` (same model object).

    The reference returns ``bundle`` itself; any other variant needs its entry in ``model.json``.
    """
    spec = variant_spec(name)
    if spec.name == REFERENCE:
        return bundle
    entry = (bundle.metadata.variants or {}).get(name)
    if entry is None:
        calibrated = ", ".join([REFERENCE, *(bundle.metadata.variants or {})])
        raise VariantError(
            f"{bundle.path / METADATA_FILE} holds no calibration for the variant {name} (calibrated for: "
            f"{calibrated}); its thresholds were fitted at another precision and would not keep their "
            f"validated sensitivity. Fit them with {spec.export_hint(bundle)}"
        )
    if (entry.engine, entry.precision) != (spec.engine, spec.precision):
        raise VariantError(
            f"{bundle.path / METADATA_FILE}: variants.{name} records {entry.engine} {entry.precision}, but {name} "
            f"is {spec.engine} {spec.precision}; re-export it with {spec.export_hint(bundle)}"
        )
    uncertainty = bundle.metadata.uncertainty
    if uncertainty is not None and entry.uncertainty is not None:
        uncertainty = uncertainty.model_copy(update=entry.uncertainty.model_dump(exclude_unset=True))
    metadata = bundle.metadata.model_copy(update={"calibration": entry.calibration, "uncertainty": uncertainty})
    return replace(bundle, metadata=metadata)


def torch_forward(model: torch.nn.Module, *, precision: str = "float32") -> Forward:
    """The PyTorch forward pass at ``precision`` ("float32", or "bfloat16" autocast), outputs cast to float32."""
    device_type = next(model.parameters()).device.type

    def run(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), torch.autocast(device_type, torch.bfloat16, enabled=precision == "bfloat16"):
            logits, embedding = forward(model, pixels)
        return logits.float(), embedding.float()

    return run


def load_forward(bundle: Bundle, name: str, *, check_recorded_file: bool = True) -> Forward:
    """The forward pass of variant ``name`` for ``bundle``.

    ``check_recorded_file``: an ONNX variant's file must have the SHA-256 its ``model.json`` entry records
    (a file exported, edited or replaced afterwards is refused); the exporter turns this off while it
    measures a file it has just written and not yet recorded.
    """
    spec = variant_spec(name)
    if spec.file is None:
        return torch_forward(bundle.model, precision=spec.precision)
    from skintriage.inference.onnx_runner import OnnxRunner  # onnxruntime is an optional extra

    path = bundle.path / spec.file
    if check_recorded_file:
        entry = (bundle.metadata.variants or {}).get(name)
        if entry is not None and path.is_file() and entry.sha256 != sha256_of(path):
            raise VariantError(
                f"{path} does not match {bundle.path / METADATA_FILE} (SHA-256 differs from variants.{name}.sha256): "
                f"the file was changed after it was calibrated; re-export it with {spec.export_hint(bundle)}"
            )
    return OnnxRunner.load(path, bundle=bundle)
