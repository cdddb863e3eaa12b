"""skintriage: a research prototype for skin-lesion image triage. Not a diagnostic device."""

import os

__version__ = "0.1.0"

# No analytics: ONNX Runtime's official Linux and macOS builds send usage telemetry to Microsoft (1DS, since
# 2026) and keep a session file in the temporary folder unless this is set before onnxruntime is loaded.
# Every skintriage import sets it first; a user who set it otherwise keeps their choice.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

DISCLAIMER = (
    "Research prototype, not a medical device: it must not be used to diagnose, treat or exclude any "
    "disease. It was trained on public dermoscopic and clinical image datasets that contain no Merkel "
    "cell carcinoma or cutaneous metastasis images."
)
