"""Which variant (engine and precision, :mod:`skintriage.inference.variants`) runs a bundle's plain forward pass.

``variant="auto"`` runs the bundle's recorded ``default_variant``: the one ``skintriage export --variant all``
chose by measurement (the fastest whose validation metrics stay within the float32 confidence intervals
and whose referral levels agree with float32 on at least 99.5% of validation images; see
:mod:`skintriage.training.deployment`). The choice is made once, where the variants were measured, and
recorded, so that a prediction does not depend on which engine happened to win a timing race at load.
When the default cannot run here (its file is missing or damaged, onnxruntime is not installed, the
model is on an accelerator) ``"auto"`` falls back to PyTorch float32 with a warning naming the reason.

A variant asked for by name is run or refused: a bundle that was not calibrated at that precision, or
whose file is missing, changed or stale, is an error naming the file and the command that fixes it.
Saliency (Grad-CAM) needs gradients and always runs on the PyTorch float32 model, whatever is chosen here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from skintriage.common.extras import MissingExtraError
from skintriage.inference.variants import REFERENCE, VARIANTS, Forward, calibrated_at, load_forward, variant_spec
from skintriage.model.bundle import Bundle, BundleError

AUTO = "auto"
VARIANT_CHOICES = (AUTO, *VARIANTS)


@dataclass(frozen=True)
class BackendChoice:
    """The variant chosen for a bundle, why, and its forward pass (``None``: PyTorch float32 on the bundle's model)."""

    variant: str
    reason: str
    forward: Forward | None = None

    @property
    def engine(self) -> str:
        """ "torch" or "onnxruntime"."""
        return VARIANTS[self.variant].engine


def choose_backend(bundle: Bundle, variant: str = AUTO) -> BackendChoice:
    """Pick the variant for ``bundle`` (see the module docstring)."""
    if variant == AUTO:
        default = bundle.metadata.default_variant or REFERENCE
        if default == REFERENCE:
            return BackendChoice(REFERENCE, "the bundle's default variant")
        try:
            return _load(bundle, default, reason="the bundle's default variant (chosen by measurement at export)")
        except (BundleError, MissingExtraError, ValueError) as error:
            warnings.warn(f"using PyTorch float32 instead of the default variant {default}: {error}", stacklevel=2)
            return BackendChoice(REFERENCE, f"the default variant {default} cannot run here: {error}")
    if variant_spec(variant).name == REFERENCE:
        return BackendChoice(REFERENCE, f"variant {REFERENCE!r} was asked for")
    return _load(bundle, variant, reason=f"variant {variant!r} was asked for")


def _load(bundle: Bundle, name: str, *, reason: str) -> BackendChoice:
    calibrated_at(bundle, name)  # refuses a variant the bundle holds no calibration for
    spec = variant_spec(name)
    if spec.engine == "onnxruntime" and next(bundle.model.parameters()).device.type != "cpu":
        raise ValueError(f"the variant {name} runs on the CPU; load the bundle with device='cpu'")
    return BackendChoice(name, reason, load_forward(bundle, name))
