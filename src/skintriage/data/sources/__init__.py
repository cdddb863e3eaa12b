"""One module per public dataset; importing this package registers them all in ``SOURCES``."""

from skintriage.data.sources import ham10000  # noqa: F401  (registers on import)
from skintriage.data.sources.registry import SOURCES, FetchError, Source, get_source

__all__ = ["SOURCES", "FetchError", "Source", "get_source"]
