"""The source registry: each public dataset registers one :class:`Source` under a short name.

A source knows how to read its own files into raw rows (``read``), which label map its vocabulary
uses, how the images were acquired, its licence and how a user obtains it. Turning raw rows into a
validated :class:`~skintriage.data.records.Manifest` is shared (``Source.load``), so every source gets
the same checks and the same error messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from skintriage.common.errors import SkintriageError
from skintriage.data.records import Manifest, build_manifest

ReadRows = Callable[..., pd.DataFrame]  # read(root, *, metadata=None) -> raw rows
Fetch = Callable[[Path], None]  # fetch(destination) downloads the dataset or raises FetchError


class FetchError(SkintriageError, RuntimeError):
    """A download that could not run here; the message says what to do by hand."""


class UnknownSourceError(SkintriageError, KeyError):
    """A source name that is not registered; the message lists the registered ones."""


class DatasetRootError(SkintriageError, FileNotFoundError):
    """A dataset root (``--root``, a config's source root) that is not a folder."""


@dataclass(frozen=True)
class Source:
    name: str
    title: str
    description: str
    licence: str
    citation: str
    obtain: str
    label_map: str
    read: ReadRows
    acquisition: str | None = None
    # Fractions for the project's own split, used for rows the source gives no official split.
    split_fractions: tuple[tuple[str, float], ...] = (("train", 0.85), ("val", 0.15))
    # An acquisition artefact every image of the source carries (a key of data.presets.ARTEFACT_REMOVERS),
    # removed when the config says mask_watermark: a shortcut otherwise, when sources are mixed.
    artefact: str | None = None
    fetch: Fetch | None = None

    def load(
        self,
        root: Path | str,
        *,
        metadata: Path | str | None = None,
        check_images: bool = True,
        on_missing: str = "error",
        progress: bool = False,
    ) -> Manifest:
        """Read the dataset at ``root`` into a validated manifest (``metadata`` overrides the CSV it reads)."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetRootError(f"source {self.name!r}: dataset root {root} is not a directory")
        raw = self.read(root, metadata=Path(metadata) if metadata else None)
        return build_manifest(
            raw,
            source=self.name,
            root=root,
            label_map_name=self.label_map,
            acquisition=self.acquisition,
            check_images=check_images,
            on_missing=on_missing,
            progress=progress,
        )


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    if source.name in SOURCES:
        raise ValueError(f"source {source.name!r} is registered twice")
    SOURCES[source.name] = source
    return source


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise UnknownSourceError(f"unknown source {name!r}; registered sources: {', '.join(sorted(SOURCES))}") from None
