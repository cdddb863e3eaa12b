"""Counts a researcher checks before trusting a dataset: per split x diagnosis x triage group, ids, gaps."""

from __future__ import annotations

from typing import Any

from skintriage.data.records import SPLITS, Manifest
from skintriage.data.splits import LeakageReport


def _counts(values) -> dict[str, int]:
    return {str(key): int(count) for key, count in values.value_counts().sort_index().items()}


def summarize_manifest(manifest: Manifest, *, leakage: LeakageReport, split_policy: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary of a split manifest and its leakage audit."""
    frame = manifest.frame
    splits = {
        str(split): {
            "n_images": len(rows),
            "diagnosis": _counts(rows["diagnosis"]),
            "triage_group": _counts(rows["triage_group"]),
        }
        for split, rows in sorted(frame.groupby("split"), key=lambda item: SPLITS.index(item[0]))
    }
    labels = {
        str(raw): {
            "diagnosis": str(rows["diagnosis"].iloc[0]),
            "triage_group": str(rows["triage_group"].iloc[0]),
            "n": len(rows),
        }
        for raw, rows in frame.groupby("raw_label", sort=True)
    }
    return {
        "source": ", ".join(sorted(frame["source"].unique())),
        "root": str(manifest.root),
        "n_images": len(frame),
        "missing_images": len(manifest.missing_images),
        "missing_examples": manifest.missing_images[:10],
        "diagnosis": _counts(frame["diagnosis"]),
        "triage_group": _counts(frame["triage_group"]),
        "acquisition": _counts(frame["acquisition"]),
        "splits": splits,
        "split_policy": split_policy,
        "groups": {
            "lesions": int(frame["lesion_id"].nunique()),
            "patients": int(frame["patient_id"].nunique()),
            "images_without_lesion_or_patient_id": int((frame["lesion_id"].isna() & frame["patient_id"].isna()).sum()),
            "shared_lesions_across_splits": len(leakage.shared_lesions),
            "shared_patients_across_splits": len(leakage.shared_patients),
            "identical_images_across_splits": len(leakage.identical_images),
            "near_identical_images_across_splits": len(leakage.near_identical_images),
        },
        "labels": labels,
    }
