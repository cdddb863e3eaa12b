"""Markers the suite applies by itself, so that ``python -m pytest -m "not realdata and not browser"`` works
without a marker on every test.

* ``realdata``: the test, or a fixture it uses, names ``shared_data`` or ``SHARED_DATA`` (tests.helpers);
  it skips where ../shared/data is absent.
* ``browser``: the test, or a fixture it uses, names one of the Chromium helpers of tests.helpers.app_harness.

* ``slow``: the test requests one of ``SLOW_FIXTURES`` (each starts a demo server, exports ONNX, runs the
  benchmarks or the CLI over every hostile file: 10-30 s once per module), or is marked by hand
  (trainings, a full real test set, building a wheel).

``python -m pytest -m "not slow"`` is the quick loop; the README's ``python -m pytest`` and CI run everything.
"""

from __future__ import annotations

from types import CodeType

import pytest

REAL_DATA_NAMES = frozenset({"shared_data", "SHARED_DATA"})
BROWSER_NAMES = frozenset({"browser_page", "chromium_browser", "require_chromium", "open_app"})
SLOW_FIXTURES = frozenset(
    {"app_session", "session", "app_server", "app_run", "cli_run", "load_test", "quick_results", "exported"}
)


def code_names(code: CodeType) -> set[str]:
    """Global and attribute names a function's code refers to, nested functions and lambdas included."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            names |= code_names(constant)
    return names


def referenced_names(item: pytest.Item) -> set[str]:
    functions = [getattr(item, "function", None)]
    fixture_info = getattr(item, "_fixtureinfo", None)  # pytest's record of the fixtures this test requests
    if fixture_info is None and isinstance(item, pytest.Function):
        # a private attribute: if a pytest upgrade drops it, say so rather than silently losing every mark below
        raise pytest.UsageError(
            f"{item.nodeid}: pytest no longer sets item._fixtureinfo, which tests/conftest.py reads to mark "
            "realdata, browser and slow tests; update referenced_names for this pytest version"
        )
    if fixture_info is not None:
        functions += [definition.func for defs in fixture_info.name2fixturedefs.values() for definition in defs]
    names: set[str] = set()
    for function in functions:
        code = getattr(getattr(function, "__wrapped__", function), "__code__", None)
        if code is not None:
            names |= code_names(code)
    return names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = referenced_names(item)
        if names & REAL_DATA_NAMES:
            item.add_marker(pytest.mark.realdata)
        if names & BROWSER_NAMES:
            item.add_marker(pytest.mark.browser)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
