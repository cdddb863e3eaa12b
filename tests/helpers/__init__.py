"""What tests share, imported as a package (``from tests.helpers import write_image``): where the repository and
the real data are, small images in real formats, and the skip for absent real data. ``app_harness`` (a
running demo, headless Chromium) and ``hostile_files`` (odd and hostile image files) sit beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


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
