"""Which engine runs a bundle's plain forward pass: PyTorch, or onnxruntime on the exported ``model.onnx``.

``backend="torch"`` and ``backend="onnx"`` are what they say (``"onnx"`` fails loudly when the file is
missing, stale or damaged). ``backend="auto"`` uses the ONNX file only when it is present, matches the
bundle, gives the same numbers as PyTorch on a probe input, *and* was measured faster on this machine,
now: which engine wins depends on the CPU, its thread count and what else is running, so it is
measured rather than assumed. The measurement is a few warm batch-1 forward passes of each engine,
interleaved so that a burst of load elsewhere hits both alike, compared by their medians (a few
hundred milliseconds for the bundled ResNet-18 at 128 px). Batch 1 is what the demo runs; folder
prediction runs larger batches on the same choice.

A file that ``"auto"`` cannot use, or cannot run because onnxruntime (the optional ``[onnx]`` extra) is not
installed, is not an error (the PyTorch weights are always there) but is not silent either: it raises a
warning naming the file and the reason, kept in :attr:`BackendChoice.reason`.
Saliency (Grad-CAM) needs gradients and always runs on the PyTorch model, whatever is chosen here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from skintriage.common.extras import MissingExtraError
from skintriage.common.timing import interleaved
from skintriage.inference.batch import forward
from skintriage.inference.onnx_runner import ONNX_FILE, OnnxModelError, OnnxRunner, compare_outputs
from skintriage.model.bundle import Bundle

Backend = Literal["torch", "onnx", "auto"]
BACKENDS = ("torch", "onnx", "auto")
TIMING_REPEATS = 5  # timed forwards per engine after one warm-up each


@dataclass(frozen=True)
class BackendChoice:
    """The engine chosen for a bundle (``name``: ``"torch"`` or ``"onnx"``), why, and what was measured."""

    name: str
    reason: str
    runner: OnnxRunner | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # median batch-1 latency per engine ("auto")


def choose_backend(
    bundle: Bundle, backend: Backend = "auto", *, onnx_path: Path | str | None = None, repeats: int = TIMING_REPEATS
) -> BackendChoice:
    """Pick the engine for ``bundle`` (see the module docstring); ``onnx_path`` defaults to ``<bundle>/model.onnx``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "torch":
        return BackendChoice("torch", "backend='torch' was asked for")
    path = Path(bundle.path / ONNX_FILE if onnx_path is None else onnx_path)
    on_cpu = next(bundle.model.parameters()).device.type == "cpu"
    if backend == "onnx":
        if not on_cpu:
            raise ValueError("backend='onnx' runs on the CPU; load the bundle with device='cpu'")
        return BackendChoice("onnx", "backend='onnx' was asked for", _checked_runner(bundle, path))
    if not on_cpu:
        return BackendChoice("torch", "the model is on an accelerator; the ONNX backend runs on the CPU")
    if not path.is_file():
        return BackendChoice("torch", f"no {path.name} in {path.parent} (create one with `skintriage export`)")
    try:
        runner = _checked_runner(bundle, path)
    except (OnnxModelError, MissingExtraError) as error:
        warnings.warn(f"using the PyTorch model: {error}", stacklevel=2)
        return BackendChoice("torch", f"{path} is unusable: {error}")
    timings = _median_latencies_ms(bundle, runner, repeats=repeats)
    if timings["onnx"] < timings["torch"]:
        return BackendChoice("onnx", "measured faster than PyTorch (batch 1)", runner, timings)
    return BackendChoice("torch", "measured faster than onnxruntime (batch 1)", None, timings)


def _probe(bundle: Bundle) -> torch.Tensor:
    size = bundle.metadata.preprocessing.input_size
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _torch_forward(bundle: Bundle, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return forward(bundle.model, pixels)


def _checked_runner(bundle: Bundle, path: Path) -> OnnxRunner:
    """Load ``path`` (metadata checks) and check its numbers against PyTorch on one probe input."""
    runner = OnnxRunner.load(path, bundle=bundle)
    pixels = _probe(bundle)
    reference = tuple(t.float().cpu().numpy() for t in _torch_forward(bundle, pixels))
    candidate = tuple(t.numpy() for t in runner(pixels))
    agreement = compare_outputs(reference, candidate, temperature=bundle.temperature)
    if not agreement.ok():
        raise OnnxModelError(
            f"{path} records the bundle's weights but computes something else ({agreement.summary()}): "
            f"the file was altered after export; re-export it with "
            f"`skintriage export --checkpoint {bundle.path} --format onnx`, or delete it"
        )
    return runner


def _median_latencies_ms(bundle: Bundle, runner: OnnxRunner, *, repeats: int) -> dict[str, float]:
    pixels = _probe(bundle)
    engines = {"torch": lambda _: _torch_forward(bundle, pixels), "onnx": lambda _: runner(pixels)}
    timings = interleaved(engines, warmup=1, repeats=repeats, progress=False)  # the benchmarks' timer
    return {name: round(1e3 * timing.p50, 3) for name, timing in timings.items()}
