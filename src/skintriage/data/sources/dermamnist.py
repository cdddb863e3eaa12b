"""DermaMNIST (MedMNIST v2/v3): HAM10000 resized to 28, 64, 128 or 224 px, stored as ``.npz`` arrays.

Each file holds ``train_images``/``train_labels``, ``val_images``/``val_labels`` and
``test_images``/``test_labels`` (images N x H x W x 3 uint8, labels N x 1) with MedMNIST's official
7:1:2 split, which the manifest keeps. Labels 0..6 are HAM10000's seven classes in MedMNIST's order
(medmnist ``INFO["dermamnist"]["label"]``). The images are HAM10000's, so a project that also loads
HAM10000 has every image twice; DermaMNIST has no lesion ids, so only image hashing can find them.

``metadata`` names the ``.npz`` to read; by default the highest-resolution ``dermamnist*.npz`` in the
dataset root is used, because the lower resolutions are downsamplings of the same images.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from skintriage.data.records import ARRAY_SEPARATOR, npz_array_shapes
from skintriage.data.sources.files import MetadataError, download
from skintriage.data.sources.registry import FetchError, Source, register

# medmnist INFO["dermamnist"]["label"]: 0 actinic keratoses and intraepithelial carcinoma, 1 basal cell
# carcinoma, 2 benign keratosis-like lesions, 3 dermatofibroma, 4 melanoma, 5 melanocytic nevi,
# 6 vascular lesions; as HAM10000 dx codes (label map isic2018).
LABELS = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
SPLITS = ("train", "val", "test")
FILE_PATTERN = re.compile(r"^dermamnist(?:_(?P<size>\d+))?\.npz$")

# MedMNIST v3 Zenodo record (medmnist/info.py: url, url_64, ... and MD5, MD5_64, ...).
URLS = {
    28: "https://zenodo.org/records/10519652/files/dermamnist.npz?download=1",
    64: "https://zenodo.org/records/10519652/files/dermamnist_64.npz?download=1",
    128: "https://zenodo.org/records/10519652/files/dermamnist_128.npz?download=1",
    224: "https://zenodo.org/records/10519652/files/dermamnist_224.npz?download=1",
}
MD5 = {
    28: "0744692d530f8e62ec473284d019b0c7",
    64: "b70a2f5635c6199aeaa28c31d7202e1f",
    128: "2defd784463fa5243564e855ed717de1",
    224: "8974907d8e169bef5f5b96bc506ae45d",
}
FETCH_SIZE = 224  # what models train at; read() picks the largest file present anyway
MANUAL_STEPS = f"""\
  1. Download {URLS[FETCH_SIZE]}
     (MedMNIST v3, Zenodo record 10519652, CC BY-NC 4.0; other sizes: dermamnist.npz (28 px),
     dermamnist_64.npz, dermamnist_128.npz), or with the medmnist package:
       pip install medmnist
       python -c "from medmnist import DermaMNIST; DermaMNIST(split='train', download=True, size=224, root='ROOT')"
  2. Keep the file name (dermamnist_224.npz) and put it in ROOT.
  3. Run: skintriage data summarize dermamnist --root ROOT"""


def file_size(name: str) -> int | None:
    """The image size a MedMNIST file name encodes (no suffix means 28 px), or None if not DermaMNIST."""
    match = FILE_PATTERN.match(name)
    if match is None:
        return None
    return int(match["size"] or 28)


def find_npz(root: Path) -> Path:
    found = {path: file_size(path.name) for path in root.glob("*.npz")}
    candidates = {path: size for path, size in found.items() if size is not None}
    if not candidates:
        raise MetadataError(
            f"{root}: no dermamnist*.npz found (expected dermamnist.npz, dermamnist_64.npz, "
            f"dermamnist_128.npz or dermamnist_224.npz); to obtain one:\n{MANUAL_STEPS}"
        )
    return max(candidates, key=lambda path: candidates[path])


def array_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        return npz_array_shapes(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise MetadataError(f"{path}: not a readable .npz file ({error})") from None


def _labels(path: Path, key: str, count: int) -> np.ndarray:
    """The split's labels as a flat int array, checked against the image count and the class range."""
    with np.load(path, allow_pickle=False) as arrays:
        stored = arrays[key]
    labels = stored[:, 0] if stored.ndim == 2 and stored.shape[1] == 1 else stored
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise MetadataError(
            f"{path.name}: {key} has shape {stored.shape} and dtype {stored.dtype}; expected N or N x 1 integers"
        )
    if len(labels) != count:
        raise MetadataError(f"{path.name}: {key} has {len(labels)} labels but the images array has {count} images")
    bad = np.flatnonzero((labels < 0) | (labels >= len(LABELS)))
    if len(bad):
        shown = ", ".join(f"{key}[{index}] = {labels[index]}" for index in bad[:5])
        raise MetadataError(
            f"{path.name}: {len(bad)} labels outside 0..{len(LABELS) - 1} (DermaMNIST's 7 classes): {shown}"
        )
    return labels.astype(int)


def read(root: Path, *, metadata: Path | None = None) -> pd.DataFrame:
    path = find_npz(root) if metadata is None else (metadata if metadata.exists() else root / metadata)
    if not path.is_file():
        raise MetadataError(f"{path}: file not found")
    if not path.resolve().is_relative_to(root.resolve()):
        raise MetadataError(f"{path}: must be inside the dataset root {root}, as image locations are relative to it")
    location = path.resolve().relative_to(root.resolve()).as_posix()
    stem = path.name.removesuffix(".npz")
    shapes = array_shapes(path)
    frames = []
    for split in SPLITS:
        images_key, labels_key = f"{split}_images", f"{split}_labels"
        for key in (images_key, labels_key):
            if key not in shapes:
                raise MetadataError(
                    f"{path.name}: array {key!r} missing; found {', '.join(sorted(shapes))} "
                    "(a DermaMNIST file has train/val/test _images and _labels)"
                )
        shape = shapes[images_key]
        if len(shape) not in (3, 4) or 0 in shape[1:3] or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
            raise MetadataError(
                f"{path.name}: {images_key} has shape {shape}; expected N x H x W x 3 (or N x H x W grey-scale)"
            )
        labels = _labels(path, labels_key, shape[0])
        indices = np.arange(shape[0])
        frames.append(
            pd.DataFrame(
                {
                    "image_id": [f"{stem}:{split}:{index}" for index in indices],
                    "image": [f"{location}{ARRAY_SEPARATOR}{images_key}/{index}" for index in indices],
                    "raw_label": [LABELS[label] for label in labels],
                    "split": split,
                    "origin": [f"{path.name} {labels_key}[{index}]" for index in indices],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def fetch(destination: Path) -> None:
    """Download the 224 px file from MedMNIST's Zenodo record and check its MD5."""
    target = destination / f"dermamnist_{FETCH_SIZE}.npz"
    download(URLS[FETCH_SIZE], target, manual_steps=MANUAL_STEPS)
    digest = hashlib.md5()
    with target.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != MD5[FETCH_SIZE]:
        target.unlink()
        raise FetchError(
            f"{URLS[FETCH_SIZE]} downloaded with MD5 {digest.hexdigest()}, expected {MD5[FETCH_SIZE]} "
            f"(truncated or changed file; deleted).\nTo obtain it by hand:\n{MANUAL_STEPS}"
        )


SOURCE = register(
    Source(
        name="dermamnist",
        title="DermaMNIST (MedMNIST)",
        description="HAM10000's 10,015 dermoscopic images resized to 28-224 px in MedMNIST's .npz format, "
        "7 diagnoses, with MedMNIST's official train/val/test split (7:1:2). Same images as HAM10000 and no "
        "lesion ids, so the split is not lesion-grouped.",
        licence="CC BY-NC 4.0 (MedMNIST v3; HAM10000's licence)",
        citation="Yang J, Shi R, Wei D, et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D "
        "biomedical image classification. Sci Data 10, 41 (2023); and Tschandl P, Rosendahl C, Kittler H. "
        "The HAM10000 dataset. Sci Data 5, 180161 (2018).",
        obtain=MANUAL_STEPS,
        label_map="isic2018",
        read=read,
        acquisition="dermoscopic",
        split_fractions=(("train", 0.7), ("val", 0.1), ("test", 0.2)),
        fetch=fetch,
    )
)
