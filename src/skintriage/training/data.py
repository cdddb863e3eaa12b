"""The training data of a config: each source loaded and split as the config says, combined into one manifest.

Used by training (:mod:`skintriage.training.loop`) and by refitting an existing bundle's gates on the splits it was
trained on (:mod:`skintriage.training.gates`), so that both see exactly the same rows in the same splits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from skintriage.data.records import Manifest
from skintriage.data.sources import get_source
from skintriage.data.splits import (
    DuplicateMove,
    ImageHashes,
    concat_hashes,
    hash_images,
    resolve_cross_source_duplicates,
    split_manifest,
)
from skintriage.training.config import SourceConfig, TrainConfig


@dataclass(frozen=True)
class TrainingData:
    """The combined, split manifest of a config's sources, how each was split, the rows moved so that
    no photo straddles splits across sources, and the image hashes that found them (row for row)."""

    manifest: Manifest
    policies: list[dict]
    cross_source_moves: list[DuplicateMove]
    hashes: ImageHashes


def load_split_source(
    config: TrainConfig, source_config: SourceConfig, *, data_root: Path | None, progress: bool
) -> tuple[Manifest, dict, ImageHashes]:
    """One source, loaded and split as the config says; returns the manifest, the split policy and the hashes."""
    source = get_source(source_config.name)
    manifest = source.load(config.source_root(source_config, data_root), progress=progress).with_images()
    hashes = hash_images(manifest, progress=progress)
    split, policy = split_manifest(
        manifest,
        strategy=source_config.split,
        fractions=source.split_fractions,
        seed=config.split_seed,
        hashes=hashes if source_config.split == "project" else None,
    )
    return split, {"source": source.name, "licence": source.licence, "citation": source.citation, **policy}, hashes


def combine(manifests: list[Manifest]) -> Manifest:
    root = Path(os.path.commonpath([str(Path(m.root).resolve()) for m in manifests]))
    return Manifest.concat(manifests, root=root)


def training_manifest(config: TrainConfig, *, data_root: Path | None = None, progress: bool = True) -> TrainingData:
    loaded = [load_split_source(config, s, data_root=data_root, progress=progress) for s in config.sources]
    combined = combine([manifest for manifest, _, _ in loaded])
    hashes = concat_hashes([hashes for _, _, hashes in loaded])
    manifest, moves = resolve_cross_source_duplicates(combined, hashes)
    return TrainingData(manifest, [policy for _, policy, _ in loaded], moves, hashes)
