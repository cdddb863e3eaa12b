"""Leakage-free splits, and the audit that proves (or disproves) a split is leakage-free.

A model that has seen one photo of a lesion in training and is tested on another photo of the same
lesion is graded on memory, not skill; HAM10000 holds up to six images per lesion, and DermaMNIST's
published split leaks hundreds of lesions between train and test this way. So images are grouped
before splitting: two images belong to one group when they share a patient, a lesion, or are the
same picture (byte-identical or near-identical by perceptual hash). Whole groups go to one split,
stratified by diagnosis, deterministically for a given seed. An official split, when the source has
one, is kept as it is.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from skintriage.common.errors import ArgumentError
from skintriage.data.images import ImageDecodeError
from skintriage.data.records import Manifest, ManifestError

# "Near-identical" means the same picture re-encoded, resized or lightly retouched, not a second photo
# of a lesion. Two tests must both pass. (1) A 256-bit difference hash (16x16 gradient signs) within 20
# bits: a re-encoded, resized or colour-shifted copy differs in at most 27 bits (95% within 19), while
# among 3,000 distinct HAM10000 lesions the closest pair differs in 25. (2) The 8x8 colour thumbnails
# within a mean absolute difference of 10 (of 255): re-encoding moves it by < 1, brightness +5% by <= 10,
# contrast +10% by <= 6. The dHash alone flags small dark naevi centred on plain skin as twins (4 such
# false pairs between HAM10000 and the ISIC 2018 test set, thumbnail differences 12.8 to 34.5).
HASH_SIDE = 16
NEAR_DUPLICATE_BITS = 20
NEAR_DUPLICATE_COLOUR = 10.0
THUMBNAIL_SIDE = 8


@dataclass(frozen=True)
class ImageHashes:
    """Per-row content hashes; rows whose image could not be read have ``None`` / a masked-out dHash."""

    sha256: list[str | None]
    dhash: np.ndarray  # (rows, HASH_SIDE**2 // 64) uint64
    thumbnail: np.ndarray  # (rows, THUMBNAIL_SIDE**2 * 3) uint8
    hashed: np.ndarray  # (rows,) bool


def hash_images(manifest: Manifest, *, progress: bool = False) -> ImageHashes:
    """Exact (SHA-256 of the stored bytes) and perceptual (dHash) hashes of every image."""
    missing = set(manifest.missing_images)
    sha256: list[str | None] = []
    dhash = np.zeros((len(manifest), HASH_SIDE * HASH_SIDE // 64), dtype=np.uint64)
    thumbnail = np.zeros((len(manifest), THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3), dtype=np.uint8)
    rows = zip(manifest.frame["image_id"], manifest.frame["image"], strict=True)
    for row, (image_id, location) in enumerate(
        tqdm(rows, total=len(manifest), desc="hashing images", disable=not progress)
    ):
        digest = None
        if image_id not in missing:
            try:
                image, data = manifest.read_image_and_bytes(location)
                digest = hashlib.sha256(data).hexdigest()
                dhash[row] = difference_hash(image)
                thumbnail[row] = colour_thumbnail(image)
            except (OSError, ImageDecodeError):
                digest = None
        sha256.append(digest)
    return ImageHashes(sha256, dhash, thumbnail, np.array([d is not None for d in sha256], dtype=bool))


def concat_hashes(parts: Sequence[ImageHashes]) -> ImageHashes:
    """The hashes of manifests concatenated in this order (as ``Manifest.concat`` stacks their rows)."""
    return ImageHashes(
        [digest for part in parts for digest in part.sha256],
        np.concatenate([part.dhash for part in parts]),
        np.concatenate([part.thumbnail for part in parts]),
        np.concatenate([part.hashed for part in parts]),
    )


def difference_hash(image: Image.Image) -> np.ndarray:
    """dHash: the signs of horizontal brightness gradients on a (side+1) x side thumbnail, packed in uint64s."""
    thumbnail = image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BILINEAR)
    pixels = np.asarray(thumbnail, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return np.packbits(bits).view(">u8").astype(np.uint64)


def colour_thumbnail(image: Image.Image) -> np.ndarray:
    return np.asarray(image.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX), dtype=np.uint8).flatten()


def near_duplicate_pairs(hashes: ImageHashes) -> list[tuple[int, int, int]]:
    """All row pairs (i < j, dHash distance) that pass both near-identity tests described above."""
    indices = np.flatnonzero(hashes.hashed)
    if len(indices) < 2:
        return []
    values = hashes.dhash[indices]
    pairs = []
    block = max(1, 1_000_000 // len(values))  # bounds the distance matrix to ~1M entries per step
    for start in range(0, len(values), block):
        chunk = values[start : start + block]
        distances = np.bitwise_count(chunk[:, None, :] ^ values[None, :, :]).sum(axis=2, dtype=np.int32)
        rows, cols = np.nonzero(distances <= NEAR_DUPLICATE_BITS)
        for r, c in zip(rows, cols, strict=True):
            i, j = int(indices[start + r]), int(indices[c])
            colour = np.abs(hashes.thumbnail[i].astype(np.int16) - hashes.thumbnail[j]).mean()
            if i < j and colour <= NEAR_DUPLICATE_COLOUR:
                pairs.append((i, j, int(distances[r, c])))
    return pairs


class _UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def leakage_groups(manifest: Manifest, hashes: ImageHashes | None = None) -> np.ndarray:
    """Group number per row: rows sharing a patient, a lesion or a (near-)identical image share a group."""
    frame = manifest.frame
    groups = _UnionFind(len(frame))
    for column in ("patient_id", "lesion_id"):
        first_row: dict[str, int] = {}
        for row, value in enumerate(frame[column]):
            if pd.isna(value):
                continue
            key = str(value)
            if key in first_row:
                groups.union(first_row[key], row)
            else:
                first_row[key] = row
    if hashes is not None:
        first_row = {}
        for row, digest in enumerate(hashes.sha256):
            if digest is None:
                continue
            if digest in first_row:
                groups.union(first_row[digest], row)
            else:
                first_row[digest] = row
        for i, j, _ in near_duplicate_pairs(hashes):
            groups.union(i, j)
    return np.array([groups.find(row) for row in range(len(frame))])


def assign_splits(
    manifest: Manifest,
    *,
    fractions: Sequence[tuple[str, float]],
    seed: int = 0,
    hashes: ImageHashes | None = None,
) -> Manifest:
    """Give every row without an official split a split, keeping groups whole and diagnoses balanced.

    Groups are stratified by their rarest diagnosis (so that a patient with a melanoma and three naevi
    counts towards melanoma), shuffled with ``seed``, then placed largest first into the split that is
    furthest below its target share of that stratum.
    """
    frame = manifest.frame
    unsplit = frame["split"].isna().to_numpy()
    if not unsplit.any():
        return manifest
    names = [name for name, _ in fractions]
    targets = np.array([share for _, share in fractions], dtype=float)
    if not names or (targets <= 0).any() or not np.isclose(targets.sum(), 1.0):
        raise ValueError(f"split fractions must be positive and sum to 1, got {list(fractions)}")
    groups = leakage_groups(manifest, hashes)
    official = set(groups[~unsplit])
    straddling = official & set(groups[unsplit])
    if straddling:
        rows = frame[np.isin(groups, list(straddling))]
        raise ManifestError(
            f"{len(straddling)} groups (patients/lesions/images) have rows both with and without an official split",
            [
                f"image {image}: {'no split' if pd.isna(split) else f'split {split}'}"
                for image, split in zip(rows["image_id"], rows["split"], strict=True)
            ],
        )

    frequency = frame["diagnosis"].value_counts()
    members: dict[int, list[int]] = defaultdict(list)
    for row in np.flatnonzero(unsplit):
        members[groups[row]].append(row)
    strata: dict[str, list[int]] = defaultdict(list)
    for group, rows in members.items():
        rarest = min(frame["diagnosis"].iloc[rows], key=lambda diagnosis: (frequency[diagnosis], diagnosis))
        strata[rarest].append(group)

    rng = np.random.default_rng(seed)
    assigned = frame["split"].to_numpy(dtype=object).copy()
    for stratum in sorted(strata):
        stratum_groups = sorted(strata[stratum])
        rng.shuffle(stratum_groups)
        stratum_groups.sort(key=lambda group: -len(members[group]))  # stable: shuffled order breaks ties
        total = sum(len(members[group]) for group in stratum_groups)
        counts = np.zeros(len(names))
        for group in stratum_groups:
            chosen = int(np.argmax(targets * total - counts))
            counts[chosen] += len(members[group])
            assigned[members[group]] = names[chosen]
    return manifest.with_splits(assigned)


# Most held out first: a group found in several splits moves whole to the first of these it occupies.
HELD_OUT_ORDER = ("test", "val", "train")


@dataclass(frozen=True)
class DuplicateMove:
    """One row moved to another split because a copy of its image (or its lesion) sat there."""

    image_id: str
    source: str
    from_split: str
    to_split: str

    def to_dict(self) -> dict[str, str]:
        return {"image_id": self.image_id, "source": self.source, "from": self.from_split, "to": self.to_split}


def resolve_cross_source_duplicates(manifest: Manifest, hashes: ImageHashes) -> tuple[Manifest, list[DuplicateMove]]:
    """Keep each leakage group in one split after separately split sources are combined.

    Each source is split on its own, so a photo two sources share (two DermNet folders filing one image
    under two topics, an atlas photo copied into another collection) can sit in train in one and in test
    in the other. Every group that straddles splits moves whole to the most held-out split it touches
    (test, then val, then train): the held-out sets never lose an image, training loses the copy.
    """
    frame = manifest.frame
    if frame["split"].isna().any():
        raise ValueError(f"{int(frame['split'].isna().sum())} rows have no split; split every source first")
    rank = {name: position for position, name in enumerate(HELD_OUT_ORDER)}
    splits = frame["split"].to_numpy(dtype=object).copy()
    moves: list[DuplicateMove] = []
    groups = leakage_groups(manifest, hashes)
    splits_per_group = pd.Series(splits).groupby(groups).nunique()
    for group in splits_per_group.index[splits_per_group > 1]:
        rows = np.flatnonzero(groups == group)
        present = set(splits[rows])
        target = min(present, key=lambda name: rank.get(name, len(rank)))
        for row in rows:
            if splits[row] != target:
                moves.append(
                    DuplicateMove(str(frame["image_id"].iloc[row]), str(frame["source"].iloc[row]), splits[row], target)
                )
                splits[row] = target
    return (manifest.with_splits(splits.tolist()) if moves else manifest), moves


def naive_image_split(manifest: Manifest, *, fractions: Sequence[tuple[str, float]], seed: int = 0) -> Manifest:
    """A random image-level split that ignores lesions and patients: the mistake the audit exists to catch."""
    rng = np.random.default_rng(seed)
    names = [name for name, _ in fractions]
    shares = np.array([share for _, share in fractions], dtype=float)
    return manifest.with_splits(rng.choice(names, size=len(manifest), p=shares / shares.sum()).tolist())


@dataclass
class LeakageReport:
    """What crosses split boundaries. Every list holds concrete ids so a reader can check them."""

    split_sizes: dict[str, int]
    shared_lesions: dict[str, list[str]] = field(default_factory=dict)
    shared_patients: dict[str, list[str]] = field(default_factory=dict)
    identical_images: list[dict[str, str]] = field(default_factory=list)
    near_identical_images: list[dict[str, str | int]] = field(default_factory=list)
    images_not_hashed: int = 0
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS

    @property
    def leaks(self) -> int:
        return (
            len(self.shared_lesions)
            + len(self.shared_patients)
            + len(self.identical_images)
            + len(self.near_identical_images)
        )

    def to_dict(self) -> dict:
        return {
            "split_sizes": self.split_sizes,
            "shared_lesions": len(self.shared_lesions),
            "shared_patients": len(self.shared_patients),
            "identical_images": len(self.identical_images),
            "near_identical_images": len(self.near_identical_images),
            "images_not_hashed": self.images_not_hashed,
            "near_duplicate_bits": self.near_duplicate_bits,
            "examples": {
                "shared_lesions": dict(list(self.shared_lesions.items())[:20]),
                "shared_patients": dict(list(self.shared_patients.items())[:20]),
                "identical_images": self.identical_images[:20],
                "near_identical_images": self.near_identical_images[:20],
            },
        }


def audit_leakage(manifest: Manifest, hashes: ImageHashes | None = None) -> LeakageReport:
    """Find lesions, patients and identical or near-identical images present in more than one split."""
    frame = manifest.frame
    if frame["split"].isna().any():
        raise ValueError(f"{int(frame['split'].isna().sum())} rows have no split; assign splits before auditing")
    report = LeakageReport(split_sizes={k: int(v) for k, v in frame["split"].value_counts().sort_index().items()})
    for column, found in (("lesion_id", report.shared_lesions), ("patient_id", report.shared_patients)):
        known = frame[frame[column].notna()]
        for value, splits in known.groupby(column)["split"]:
            if splits.nunique() > 1:
                found[str(value)] = sorted(splits.unique())
    if hashes is None:
        return report
    ids, splits = frame["image_id"].tolist(), frame["split"].tolist()
    report.images_not_hashed = sum(h is None for h in hashes.sha256)
    by_digest: dict[str, int] = {}
    for row, digest in enumerate(hashes.sha256):
        if digest is None:
            continue
        first = by_digest.setdefault(digest, row)
        if first != row and splits[first] != splits[row]:
            report.identical_images.append(
                {"image_a": ids[first], "split_a": splits[first], "image_b": ids[row], "split_b": splits[row]}
            )
    for i, j, distance in near_duplicate_pairs(hashes):
        if splits[i] != splits[j] and hashes.sha256[i] != hashes.sha256[j]:
            report.near_identical_images.append(
                {"image_a": ids[i], "split_a": splits[i], "image_b": ids[j], "split_b": splits[j], "bits": distance}
            )
    return report


SPLIT_STRATEGIES = ("project", "official", "naive")


def split_manifest(
    manifest: Manifest,
    *,
    strategy: str,
    fractions: Sequence[tuple[str, float]],
    seed: int = 0,
    hashes: ImageHashes | None = None,
) -> tuple[Manifest, dict]:
    """Apply a named split strategy; returns the split manifest and a description of what was done.

    ``project`` keeps official splits and groups the rest; ``official`` refuses a source without one;
    ``naive`` ignores official splits and groups alike, to show what leakage looks like.
    """
    has_official = bool(manifest.frame["split"].notna().any())
    if strategy == "official":
        if not manifest.frame["split"].notna().all():
            raise ArgumentError("this source has no official split for every image; use --split project")
        split = manifest
    elif strategy == "project":
        split = assign_splits(manifest, fractions=fractions, seed=seed, hashes=hashes)
    elif strategy == "naive":
        split = naive_image_split(manifest, fractions=fractions, seed=seed)
    else:
        raise ArgumentError(f"unknown split strategy {strategy!r}; choose one of {SPLIT_STRATEGIES}")
    policy = {
        "strategy": strategy,
        "official_split_used": has_official and strategy != "naive",
        "fractions": dict(fractions),
        "seed": seed,
        "grouped_by": _grouping_description(strategy, hashes),
    }
    return split, policy


def _grouping_description(strategy: str, hashes: ImageHashes | None) -> str:
    if strategy == "naive":
        return "nothing: each image drawn at random"
    if strategy == "official":
        return "as published by the source"
    return "patient, lesion, identical and near-identical images" if hashes is not None else "patient, lesion"
