"""Exporting a bundle's model to ONNX, for onnxruntime on the CPU (``skintriage export --format onnx``).

The exported graph is :func:`skintriage.inference.batch.forward`, not ``model.forward``: it returns the logits
*and* the head-input embedding, because the predictor's uncertainty gate needs the embedding and a
logits-only file could not replace the PyTorch model. The batch axis is dynamic, so one file serves
single images and folder batches. Weights are exported as float32 (the bundle's float16 weights cast
up, exactly as :func:`~skintriage.model.bundle.load_bundle` does), so ONNX and PyTorch compute the same
function and parity is limited only by kernel rounding.

The ONNX metadata records which weights the file was made from (the bundle's ``weights_sha256``), the
input size, the classes, the architecture and the opset; :mod:`skintriage.inference.onnx_runner` refuses a file
whose record does not match the bundle next to it. The exporter is ``torch.onnx.export(dynamo=True)``
(the ``torch.export`` path; it needs ``onnx`` and ``onnxscript``): the TorchScript exporter is deprecated.

:func:`quantize_int8` turns such a file into the int8 variant: onnxruntime's static quantisation in QDQ
form, per-channel int8 weights and uint8 activations whose ranges (MinMax) are measured on batches the
caller supplies (training images: the test sets choose nothing, and validation is kept for calibration).
Static rather than dynamic quantisation because dynamic quantisation of convolutions runs as
``ConvInteger``, which this CPU ran 10x slower than float32 (experiments/performance).
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skintriage.common.atomic import atomic_path
from skintriage.common.extras import ONNX_EXTRA, import_optional
from skintriage.inference.batch import forward
from skintriage.inference.onnx_runner import (
    INPUT_NAME,
    META_ARCHITECTURE,
    META_CLASSES,
    META_CODE_VERSION,
    META_FORMAT,
    META_INPUT_SIZE,
    META_OPSET,
    META_WEIGHTS_SHA256,
    ONNX_FILE,
    ONNX_FORMAT,
    OUTPUT_NAMES,
)
from skintriage.model.bundle import Bundle, code_version

DEFAULT_OPSET = 18  # the lowest opset the torch.export-based exporter emits natively; onnxruntime >= 1.14 runs it


class _LogitsAndEmbedding(nn.Module):
    """``inference.forward`` as a module: the graph the ONNX file holds."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward(self.model, pixels)


def export_onnx(bundle: Bundle, path: Path | str | None = None, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``bundle``'s model as ONNX to ``path`` (default: ``model.onnx`` in the bundle folder); returns it.

    Inputs: ``pixels`` (N, 3, S, S) float32, preprocessed as the bundle says. Outputs: ``logits`` (N, C)
    and ``embedding`` (N, D). The file is written atomically, so a failed export leaves any previous one.
    """
    onnx = import_optional("onnx", extra=ONNX_EXTRA, needed_for="skintriage export")
    import_optional("onnxscript", extra=ONNX_EXTRA, needed_for="skintriage export (torch.onnx.export, dynamo=True)")
    path = Path(bundle.path / ONNX_FILE if path is None else path)
    size = bundle.metadata.preprocessing.input_size
    module = _LogitsAndEmbedding(copy.deepcopy(bundle.model).float().cpu().eval())
    example = torch.zeros(2, 3, size, size)  # batch 2: an example batch of 1 could be specialised into the graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes say nothing about the result
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    program.model.metadata_props.update(
        {
            META_FORMAT: ONNX_FORMAT,
            META_WEIGHTS_SHA256: bundle.metadata.weights_sha256,
            META_INPUT_SIZE: str(size),
            META_CLASSES: json.dumps(bundle.classes),
            META_ARCHITECTURE: json.dumps(bundle.metadata.architecture.to_json_dict()),
            META_OPSET: str(opset),
            META_CODE_VERSION: code_version(),
        }
    )
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
        onnx.checker.check_model(str(tmp))
    return path


def quantize_int8(float_path: Path | str, path: Path | str, calibration_batches: Iterable[torch.Tensor]) -> Path:
    """Write the int8 (QDQ, per-channel) quantisation of the float32 export ``float_path`` to ``path``; returns it.

    ``calibration_batches``: preprocessed (N, 3, S, S) pixels whose activations set the quantisation ranges.
    The ONNX metadata (which weights, input size, classes) is carried over; the file is written atomically.
    """
    onnx = import_optional("onnx", extra=ONNX_EXTRA, needed_for="skintriage export --variant onnx-int8")
    quantization = import_optional(
        "onnxruntime.quantization", extra=ONNX_EXTRA, needed_for="skintriage export --variant onnx-int8"
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [np.ascontiguousarray(b.detach().cpu().numpy(), dtype=np.float32) for b in calibration_batches]
    if not batches:
        raise ValueError("int8 quantisation needs at least one calibration batch")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    path = Path(path)
    record = {p.key: p.value for p in onnx.load(str(float_path)).metadata_props}
    with tempfile.TemporaryDirectory(prefix="skintriage-int8-") as scratch, atomic_path(path) as tmp:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantization.quantize_static(
            str(prepared),
            str(tmp),
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
        )
        quantized = onnx.load(str(tmp))
        del quantized.metadata_props[:]
        for key, value in record.items():
            quantized.metadata_props.add(key=key, value=value)
        onnx.save(quantized, str(tmp))
        onnx.checker.check_model(str(tmp))
    return path
