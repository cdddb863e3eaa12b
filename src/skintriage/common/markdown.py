"""Markdown formatting shared by every generated document: the evaluation report, the model card, audits.

One definition of how a number prints (three decimals, "n/a" for undefined, whole counts as integers) and
of a table, so the same metric reads the same in ``report.md`` and in ``MODEL_CARD.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def fmt(value: Any) -> str:
    """Three decimals for rates, whole numbers as integers, and "n/a" for anything undefined.

    metrics.json holds NaN (undefined rates) and null (NaN after a round trip through pandas' JSON);
    both mean "undefined" and must not print as a misleading 0 or crash the report.
    """
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return str(value)


def fmt_count(value: Any) -> str:
    """Counts are weighted sums (floats); print them as integers when they are whole."""
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return fmt(value)


def fmt_ci(*, ci95: Mapping[str, Sequence[float]] | None, key: str) -> str:
    """``[low, high]`` when the bootstrap produced an interval for ``key``, else empty (not "n/a": none was asked)."""
    interval = (ci95 or {}).get(key)
    if not interval or len(interval) != 2:
        return ""
    return f"[{fmt(interval[0])}, {fmt(interval[1])}]"


def markdown_table(*, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; cells are already formatted strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
