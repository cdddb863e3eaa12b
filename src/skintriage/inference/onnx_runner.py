"""Running a bundle's exported ONNX model with onnxruntime, and checking it against the PyTorch model.

``model.onnx`` (written by :func:`skintriage.inference.export.export_onnx`, i.e. ``skintriage export``) sits in the
bundle folder next to ``model.safetensors``. It has one input, ``pixels`` (N, 3, S, S) float32, and two
outputs, ``logits`` (N, C) and ``embedding`` (N, D): the head-input vector the uncertainty gate reads,
so :class:`OnnxRunner` is a drop-in for :func:`skintriage.inference.batch.forward` on the no-saliency path.

An ONNX file is a copy of the weights, and a copy goes stale: the bundle is retrained or refitted, the
ONNX file is not. The exporter therefore writes into the ONNX metadata the SHA-256 of the weights file
it was made from (``model.json``'s ``weights_sha256``), the input size, the classes and the opset, and
:meth:`OnnxRunner.load` refuses a file whose record does not match the bundle, or that onnxruntime
cannot read (e.g. truncated), with a message naming the file and saying how to re-export it. Because
metadata can be right while the graph is not (a file edited by hand), the variant's entry in
``model.json`` also records the file's SHA-256 (:mod:`skintriage.inference.variants`), and
:func:`parity` compares the numbers with PyTorch for the export's report.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from skintriage.common.extras import ONNX_EXTRA, import_optional
from skintriage.inference.batch import forward
from skintriage.model.bundle import Bundle, BundleError
from skintriage.triage.calibration import probabilities_at_temperature

ONNX_FILE = "model.onnx"
ONNX_FORMAT = "1"
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "embedding")
# Keys of the ONNX model's metadata_props (strings only) that tie the file to its bundle.
META_FORMAT = "skintriage.format"
META_WEIGHTS_SHA256 = "skintriage.weights_sha256"
META_INPUT_SIZE = "skintriage.input_size"
META_CLASSES = "skintriage.classes"  # JSON list
META_ARCHITECTURE = "skintriage.architecture"
META_OPSET = "skintriage.opset"
META_CODE_VERSION = "skintriage.code_version"
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| on calibrated probabilities that counts as the same model


class OnnxModelError(BundleError):
    """An ONNX file that is missing, unreadable or made from other weights; the message names the file."""


def export_hint(bundle_path: Path) -> str:
    return f"re-export it with `skintriage export --checkpoint {bundle_path} --variant onnx-float32`, or delete it"


class OnnxRunner:
    """An onnxruntime session over an exported bundle model: ``runner(pixels) -> (logits, embedding)``.

    ``InferenceSession.run`` may be called from several threads at once, so one runner, like one
    :class:`~skintriage.inference.predictor.Predictor`, serves concurrent requests.
    """

    def __init__(self, session, path: Path, *, input_size: int):
        self.session = session
        self.path = path
        self.input_size = input_size

    @classmethod
    def load(cls, path: Path | str, *, bundle: Bundle, threads: int | None = None) -> OnnxRunner:
        """Open ``path`` and check it was exported from ``bundle``'s weights; :class:`OnnxModelError` if not.

        ``threads`` (intra-op) defaults to ``torch.get_num_threads()``, so that both backends use the same
        cores (``OMP_NUM_THREADS`` / ``torch.set_num_threads`` govern both) and a timing comparison is fair.
        """
        ort = import_optional("onnxruntime", extra=ONNX_EXTRA, needed_for="the ONNX backend")
        path = Path(path)
        if not path.is_file():
            raise OnnxModelError(
                f"{path} does not exist; create it with `skintriage export --checkpoint {bundle.path} --variant onnx-float32`"
            )
        ort.disable_telemetry_events()  # ORT_DISABLE_TELEMETRY (set by ``import skintriage``) already stops them
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        # No busy-waiting between runs: spinning threads would take the cores from the PyTorch model (Grad-CAM,
        # the timing in skintriage.inference.backend) and from the web server that shares the predictor's process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
            raise OnnxModelError(
                f"{path} is not a readable ONNX model ({type(error).__name__}: {str(error).strip()[:300]}); "
                f"it may be truncated or damaged: {export_hint(bundle.path)}"
            ) from None
        check_matches_bundle(path, session.get_modelmeta().custom_metadata_map, session, bundle)
        return cls(session, path, input_size=bundle.metadata.preprocessing.input_size)

    def __call__(self, pixels: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) as CPU float32 tensors for a (N, 3, S, S) batch, like ``inference.forward``."""
        array = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
        expected = (3, self.input_size, self.input_size)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise ValueError(f"{self.path} takes (N, {', '.join(map(str, expected))}) pixels, got {array.shape}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        logits, embedding = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return torch.from_numpy(logits), torch.from_numpy(embedding)


def check_matches_bundle(path: Path, metadata: dict[str, str], session, bundle: Bundle) -> None:
    """Refuse an ONNX file whose recorded origin, inputs or outputs do not match ``bundle``."""
    hint = export_hint(bundle.path)
    if metadata.get(META_FORMAT) != ONNX_FORMAT:
        raise OnnxModelError(
            f"{path} was not written by `skintriage export` (format {metadata.get(META_FORMAT)!r}, expected "
            f"{ONNX_FORMAT!r}): it does not say which weights it holds; {hint}"
        )
    expected_sha = bundle.metadata.weights_sha256
    recorded_sha = metadata.get(META_WEIGHTS_SHA256, "")
    if recorded_sha != expected_sha:
        raise OnnxModelError(
            f"{path} is stale: it was exported from weights with SHA-256 {recorded_sha[:12]}..., but "
            f"{bundle.path / 'model.json'} has {expected_sha[:12]}...; {hint}"
        )
    input_size = bundle.metadata.preprocessing.input_size
    mismatches = []
    if metadata.get(META_INPUT_SIZE) != str(input_size):
        mismatches.append(f"input size {metadata.get(META_INPUT_SIZE)} (bundle: {input_size})")
    if metadata.get(META_CLASSES) != json.dumps(bundle.classes):
        mismatches.append(f"classes {metadata.get(META_CLASSES)} (bundle: {json.dumps(bundle.classes)})")
    inputs = [(node.name, node.shape[1:]) for node in session.get_inputs()]
    if inputs != [(INPUT_NAME, [3, input_size, input_size])]:
        mismatches.append(f"inputs {inputs} (expected {INPUT_NAME} of shape (N, 3, {input_size}, {input_size}))")
    outputs = tuple(node.name for node in session.get_outputs())
    if outputs != OUTPUT_NAMES:
        mismatches.append(f"outputs {outputs} (expected {OUTPUT_NAMES})")
    if mismatches:
        raise OnnxModelError(f"{path} does not fit the bundle {bundle.path}: {'; '.join(mismatches)}; {hint}")


# ---------------------------------------------------------------------------------------------------
# Parity with the PyTorch model


@dataclass(frozen=True)
class Parity:
    """How far the ONNX outputs are from PyTorch's on the same pixels (max absolute differences)."""

    n_images: int
    max_abs_probability: float  # calibrated probabilities (the bundle's temperature), what predictions report
    max_abs_logit: float
    max_abs_embedding: float
    argmax_agreement: float  # fraction of images whose arg-max class is the same
    argmax_disagreements: int

    def ok(self, tolerance: float = PARITY_TOLERANCE) -> bool:
        return self.max_abs_probability <= tolerance and self.argmax_disagreements == 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.n_images} images: max |Δp| {self.max_abs_probability:.2e} (calibrated probabilities), "
            f"max |Δlogit| {self.max_abs_logit:.2e}, max |Δembedding| {self.max_abs_embedding:.2e}, "
            f"arg-max agreement {self.argmax_agreement:.4f} ({self.argmax_disagreements} differ)"
        )


def compare_outputs(
    reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray], *, temperature: float
) -> Parity:
    """:class:`Parity` of ``candidate`` (logits, embedding) against ``reference``, row for row."""
    ref_logits, ref_embedding = (np.asarray(a, dtype=np.float64) for a in reference)
    new_logits, new_embedding = (np.asarray(a, dtype=np.float64) for a in candidate)
    if ref_logits.shape != new_logits.shape or ref_embedding.shape != new_embedding.shape:
        raise OnnxModelError(
            f"outputs differ in shape: logits {ref_logits.shape} vs {new_logits.shape}, "
            f"embedding {ref_embedding.shape} vs {new_embedding.shape}"
        )
    ref_p = probabilities_at_temperature(ref_logits, temperature)
    new_p = probabilities_at_temperature(new_logits, temperature)
    disagreements = int((ref_p.argmax(axis=1) != new_p.argmax(axis=1)).sum())
    n = len(ref_p)
    return Parity(
        n_images=n,
        max_abs_probability=float(np.abs(ref_p - new_p).max(initial=0.0)),
        max_abs_logit=float(np.abs(ref_logits - new_logits).max(initial=0.0)),
        max_abs_embedding=float(np.abs(ref_embedding - new_embedding).max(initial=0.0)),
        argmax_agreement=1.0 - disagreements / n if n else 1.0,
        argmax_disagreements=disagreements,
    )


def parity(bundle: Bundle, runner: OnnxRunner, batches: Iterable[torch.Tensor]) -> Parity:
    """Run both backends over ``batches`` of (N, 3, S, S) pixels and compare every image."""
    torch_out: list[tuple[np.ndarray, np.ndarray]] = []
    onnx_out: list[tuple[np.ndarray, np.ndarray]] = []
    model = bundle.model.eval()
    device = next(model.parameters()).device
    for pixels in batches:
        with torch.inference_mode():
            logits, embedding = forward(model, pixels.to(device))
        torch_out.append((logits.float().cpu().numpy(), embedding.float().cpu().numpy()))
        onnx_logits, onnx_embedding = runner(pixels)
        onnx_out.append((onnx_logits.numpy(), onnx_embedding.numpy()))
    if not torch_out:
        raise ValueError("no batches to compare")
    return compare_outputs(_stack(torch_out), _stack(onnx_out), temperature=bundle.temperature)


def _stack(outputs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])
