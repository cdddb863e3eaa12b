"""The benchmark suite: which sections run, with how many repetitions, on what data; results to disk.

Two settings: the full run (about 10 minutes on 2 CPU cores; what ``experiments/performance`` holds)
and ``quick`` (a smoke test of every code path in well under a minute: tiny counts, small training
batch). Results are rewritten after every section, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from skintriage.bench import inference, scaling, training
from skintriage.bench.report import machine_info, write_results
from skintriage.bench.samples import inference_images, training_images
from skintriage.common.errors import ArgumentError
from skintriage.common.paths import CHECKOUT_ROOT, DEFAULT_BUNDLE
from skintriage.inference.predictor import Predictor
from skintriage.training.config import load_config

SECTIONS = ("latency", "throughput", "variants", "training", "scaling")
DEFAULT_CONFIG = CHECKOUT_ROOT / "configs" / "pretrained_lite0.yaml"  # the bundled model's recipe
DEFAULT_OUT = Path("experiments/performance")


@dataclass(frozen=True)
class Settings:
    """Repetition counts per section (warm-up rounds are never timed)."""

    latency_images: int = 100
    latency_warmup: int = 10
    latency_repeats: int = 100
    folder_images: int = 256
    folder_warmup: int = 1
    folder_repeats: int = 5
    variant_repeats: int = 50
    training_steps: int = 3
    training_warmup: int = 1
    training_repeats: int = 3
    training_batch_size: int | None = None  # None: the config's (64)
    scaling_sizes: tuple[int, ...] = scaling.SIZES
    scaling_batches: tuple[int, ...] = scaling.BATCH_SIZES
    scaling_warmup: int = 2
    scaling_repeats: int = 3
    scaling_latency_repeats: int = 30


FULL = Settings()
QUICK = Settings(
    latency_images=4,
    latency_warmup=1,
    latency_repeats=4,
    folder_images=8,
    folder_warmup=1,
    folder_repeats=1,
    variant_repeats=2,
    training_steps=1,
    training_warmup=1,
    training_repeats=1,
    training_batch_size=8,
    scaling_sizes=(96, 128),
    scaling_batches=(1, 4),
    scaling_warmup=1,
    scaling_repeats=1,
    scaling_latency_repeats=2,
)


def parse_sections(only: str | Iterable[str] | None) -> list[str]:
    """``"latency,throughput"`` -> ``["latency", "throughput"]`` in suite order; ``None``: all of them."""
    if only is None:
        return list(SECTIONS)
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown or not names:
        raise ArgumentError(f"unknown benchmark section(s) {unknown or names}; choose from {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if name in names]


def run_suite(
    *,
    out: Path = DEFAULT_OUT,
    quick: bool = False,
    only: str | Iterable[str] | None = None,
    bundle: Path = DEFAULT_BUNDLE,
    config_path: Path = DEFAULT_CONFIG,
    data_root: Path | None = None,
    progress: bool = True,
    on_section: Callable[[str, dict], None] | None = None,
) -> dict:
    """Run the chosen sections and write ``out/results.{json,md}`` (and ``scaling.png``); returns the results.

    ``data_root`` defaults to the benchmark config's ``data_root``; without the real data there,
    generated JPEGs are used (the results say so). ``on_section(name, section)`` is called as each
    section finishes (the CLI prints its table).
    """
    sections = parse_sections(only)
    settings = QUICK if quick else FULL
    config = load_config(config_path, batch_size=settings.training_batch_size)
    data_root = Path(config.data_root) if data_root is None else Path(data_root)
    torch.manual_seed(0)
    started = time.perf_counter()
    results: dict = {
        "quick": quick,
        "machine": machine_info(),
        "bundle": str(bundle),
        "config": str(config_path),
        "settings": settings.__dict__
        | {"scaling_sizes": list(settings.scaling_sizes), "scaling_batches": list(settings.scaling_batches)},
        "sections": {},
        "seconds": 0.0,
    }
    predictor = Predictor.load(bundle)  # as the demo loads it: the bundle's default variant
    results["variant"] = predictor.variant
    with tempfile.TemporaryDirectory(prefix="skintriage-bench-") as scratch_name:
        scratch = Path(scratch_name)
        count = max(settings.latency_images, settings.folder_images)
        images = inference_images(count=count, data_root=data_root, scratch=scratch)
        latency_set = type(images)(images.paths[: settings.latency_images], images.origin)
        folder_set = type(images)(images.paths[: settings.folder_images], images.origin)
        runners: dict[str, Callable[[], dict]] = {
            "latency": lambda: inference.latency(
                predictor,
                latency_set,
                warmup=settings.latency_warmup,
                repeats=settings.latency_repeats,
                progress=progress,
            ),
            "throughput": lambda: inference.throughput(
                predictor,
                folder_set,
                warmup=settings.folder_warmup,
                repeats=settings.folder_repeats,
                progress=progress,
            ),
            "variants": lambda: inference.variant_comparison(
                bundle,
                folder_set,
                warmup=settings.latency_warmup,
                repeats=settings.variant_repeats,
                progress=progress,
            ),
            "training": lambda: training.training_throughput(
                config,
                training_images(
                    count=settings.training_steps * config.batch_size, data_root=data_root, scratch=scratch
                ),
                steps=settings.training_steps,
                warmup=settings.training_warmup,
                repeats=settings.training_repeats,
                progress=progress,
            ),
            "scaling": lambda: scaling.scaling(
                predictor.bundle,
                sizes=settings.scaling_sizes,
                batch_sizes=settings.scaling_batches,
                warmup=settings.scaling_warmup,
                repeats=settings.scaling_repeats,
                latency_repeats=settings.scaling_latency_repeats,
                progress=progress,
            ),
        }
        for name in sections:
            section_started = time.perf_counter()
            section = runners[name]()
            section["seconds"] = time.perf_counter() - section_started
            results["sections"][name] = section
            results["seconds"] = time.perf_counter() - started
            results["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
            write_results(results, out)
            if on_section is not None:
                on_section(name, section)
    return results
