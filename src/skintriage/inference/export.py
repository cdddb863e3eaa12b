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
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

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
