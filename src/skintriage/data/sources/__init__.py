"""One module per public dataset; importing this package registers them all in ``SOURCES``."""

# Each import registers its source.
from skintriage.data.sources import (  # noqa: F401
    ddi,
    dermamnist,
    dermnet,
    fitzpatrick17k,
    folder,
    ham10000,
    isic2018_test,
    isic_archive,
    med_node,
    pad_ufes_20,
    ph2,
    sd198,
)
from skintriage.data.sources.registry import SOURCES, FetchError, Source, get_source

__all__ = ["SOURCES", "FetchError", "Source", "get_source"]
