"""Shared fixtures: small images in real formats, and the real data folder when it is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_image(path: Path, *, size: tuple[int, int] = (32, 24), seed: int = 0, mode: str = "RGB", **save) -> Path:
    """Write a random-noise image (so that no two seeds give the same picture) in the format of the suffix."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save)
    return path


def shared_data(folder: str) -> Path:
    """The real dataset folder under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent (it exists only on the project's machines)")
    return path
