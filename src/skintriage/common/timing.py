"""Timing primitives: warm-up, repeated runs, medians and percentiles, comparisons run side by side.

A single timing on a shared 2-core machine says little: the first calls pay for lazy initialisation
(oneDNN kernels, allocator pools, cached files), and any other process can stall one run. Every
figure the suite reports is therefore a *median* over repeated runs after warm-up, and every
comparison (ours vs reference, torch vs ONNX, batch sizes) is measured in the same loop, alternating
the candidates, so that a slow spell on the machine hits both sides instead of one.

A leaf of the library (numpy and tqdm only): ``skintriage bench`` uses it, and so does the ``auto``
backend choice (:mod:`skintriage.inference.backend`), which must not depend on the benchmarks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation, as ``numpy.percentile``."""
    if not values:
        raise ValueError("no values to summarise")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class Timing:
    """Seconds per run of one thing, and how many items (images) each run handled."""

    seconds: tuple[float, ...]
    items: int = 1

    @property
    def p50(self) -> float:
        return percentile(list(self.seconds), 50)

    @property
    def p95(self) -> float:
        return percentile(list(self.seconds), 95)

    @property
    def per_second(self) -> float:
        """Items per second at the median run time (the throughput figure)."""
        return self.items / self.p50 if self.p50 > 0 else math.inf

    def latency_ms(self) -> dict:
        """The latency view: p50/p95/mean/min in milliseconds, and how many runs they summarise."""
        seconds = np.asarray(self.seconds)
        return {
            "p50_ms": 1e3 * self.p50,
            "p95_ms": 1e3 * self.p95,
            "mean_ms": 1e3 * float(seconds.mean()),
            "min_ms": 1e3 * float(seconds.min()),
            "runs": len(seconds),
        }

    def throughput(self) -> dict:
        """The throughput view: items/s at the median run, and the spread of the runs."""
        return {
            "images_per_s": self.per_second,
            "seconds_p50": self.p50,
            "seconds_min": float(min(self.seconds)),
            "seconds_max": float(max(self.seconds)),
            "images_per_run": self.items,
            "runs": len(self.seconds),
        }


def interleaved(
    candidates: Mapping[str, Callable[[int], object]],
    *,
    warmup: int,
    repeats: int,
    items: Mapping[str, int] | None = None,
    description: str = "timing",
    progress: bool = True,
) -> dict[str, Timing]:
    """Time each candidate ``repeats`` times after ``warmup`` untimed calls, alternating between them.

    Each candidate is called with the round number (0, 1, ...; warm-up rounds included), so a latency
    benchmark can feed a different image every round. Round ``r`` runs every candidate once, the order
    rotating by one each round so that no candidate always runs right after the same neighbour.
    """
    names = list(candidates)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    rounds = warmup + repeats
    for round_ in tqdm(range(rounds), desc=description, leave=False, disable=not progress):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            candidates[name](round_)
            elapsed = time.perf_counter() - started
            if round_ >= warmup:
                seconds[name].append(elapsed)
    items = items or {}
    return {name: Timing(tuple(seconds[name]), items.get(name, 1)) for name in names}


def time_calls(
    function: Callable[[int], object],
    *,
    warmup: int,
    repeats: int,
    items: int = 1,
    description: str = "timing",
    progress: bool = True,
) -> Timing:
    """:func:`interleaved` for one candidate."""
    return interleaved(
        {"only": function},
        warmup=warmup,
        repeats=repeats,
        items={"only": items},
        description=description,
        progress=progress,
    )["only"]


def ratio(ours: float, reference: float) -> float:
    """``ours / reference`` (how many times the reference's figure ours reaches); NaN without a reference."""
    return ours / reference if reference > 0 else math.nan
