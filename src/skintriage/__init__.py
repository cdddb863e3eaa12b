"""skintriage: a research prototype for skin-lesion image triage. Not a diagnostic device."""

__version__ = "0.1.0"

DISCLAIMER = (
    "Research prototype, not a medical device: it must not be used to diagnose, treat or exclude any "
    "disease. It was trained on public dermoscopic and clinical image datasets that contain no Merkel "
    "cell carcinoma or cutaneous metastasis images."
)
