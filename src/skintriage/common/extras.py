"""Optional dependencies: import one, or fail with a message naming the pip extra that installs it.

The default path (the demo, ``skintriage predict``, ``evaluate``, ``train``) runs on PyTorch alone; the ONNX
backend and ``skintriage export`` need onnxruntime, onnx and onnxscript, which ``pip install 'skintriage[onnx]'``
adds (``[dev]`` includes them). A bare ``ModuleNotFoundError`` from deep inside a backend would not say that.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from skintriage.common.errors import SkintriageError

ONNX_EXTRA = "onnx"


class MissingExtraError(SkintriageError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def install_hint(extra: str) -> str:
    return f"pip install 'skintriage[{extra}]'"


def import_optional(module: str, *, extra: str, needed_for: str) -> ModuleType:
    """``import module``, or :class:`MissingExtraError` saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{needed_for} needs {module}, which is not installed ({error}); install it with {install_hint(extra)}"
        ) from error
