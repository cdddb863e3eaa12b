"""One base for the errors a user can act on (``SkintriageError``); the CLI reports those and nothing else.

A user error (an unknown source, a missing folder, a damaged bundle) is one ``error: ...`` line and exit
status 1; any other exception is a bug and must reach the user with its traceback, not as a red line.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pandas as pd
import pytest
from typer.testing import CliRunner

import skintriage
from skintriage.cli import app
from skintriage.common.errors import SkintriageError
from skintriage.data.records import Manifest, ManifestError
from skintriage.data.splits import assign_splits

runner = CliRunner()

# Error classes the walk below must find (so that its check is not vacuous).
KNOWN = {
    "ManifestError",
    "MetadataError",
    "UnknownLabelError",
    "FetchError",
    "UnknownSourceError",
    "DatasetRootError",
    "ImageDecodeError",
    "ConfigError",
    "BundleError",
    "OnnxModelError",
    "PretrainedWeightsError",
    "GuidanceError",
    "ExampleListError",
    "MissingExtraError",
    "ArgumentError",
    "InsufficientDataError",
}


def package_exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the package (imported from it, not re-exported)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(skintriage.__path__, prefix="skintriage."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_domain_error_of_the_package_is_a_skintriage_error() -> None:
    classes = package_exception_classes()
    assert {cls.__name__ for cls in classes.values()} >= KNOWN
    assert [name for name, cls in classes.items() if not issubclass(cls, SkintriageError)] == []


def test_domain_errors_keep_their_builtin_base() -> None:
    classes = {cls.__name__: cls for cls in package_exception_classes().values()}
    assert issubclass(classes["ManifestError"], ValueError)
    assert issubclass(classes["UnknownSourceError"], KeyError)
    assert issubclass(classes["DatasetRootError"], FileNotFoundError)
    assert issubclass(classes["FetchError"], RuntimeError)
    assert issubclass(classes["MissingExtraError"], ImportError)


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit(1), not an escaped exception
    assert "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_an_unknown_source_is_one_error_line(tmp_path) -> None:
    line = one_error_line(runner.invoke(app, ["data", "summarize", "nosuch", "--root", str(tmp_path)]))
    assert "unknown source 'nosuch'; registered sources:" in line and '"' not in line  # KeyError's quotes removed


def test_a_missing_root_folder_is_one_error_line(tmp_path) -> None:
    line = one_error_line(runner.invoke(app, ["data", "summarize", "ham10000", "--root", str(tmp_path / "absent")]))
    assert f"dataset root {tmp_path / 'absent'} is not a directory" in line


def test_a_damaged_bundle_is_one_error_line(tmp_path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text("{not json", encoding="utf-8")
    args = ["evaluate", "--source", "nosuch", "--root", str(tmp_path), "--out", str(tmp_path / "out")]
    line = one_error_line(runner.invoke(app, [*args, "--checkpoint", str(bundle)]))
    assert str(bundle) in line


def test_a_bad_option_value_is_one_error_line() -> None:
    assert "--format must be md or json, not 'xml'" in one_error_line(runner.invoke(app, ["rules", "--format", "xml"]))


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path) -> None:
    def broken(name: str):
        raise KeyError("bug")

    monkeypatch.setattr("skintriage.data.sources.get_source", broken)
    result = runner.invoke(app, ["data", "summarize", "ham10000", "--root", str(tmp_path)])
    assert isinstance(result.exception, KeyError) and result.exception.args == ("bug",)
    assert "error:" not in result.output


def test_rows_with_and_without_an_official_split_in_one_group_are_named() -> None:
    frame = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "patient_id": ["p1", "p1", "p2"],
            "lesion_id": [None, None, None],
            "split": ["test", None, None],
            "diagnosis": ["nv", "nv", "mel"],
        }
    )
    with pytest.raises(ManifestError, match="have rows both with and without an official split") as raised:
        assign_splits(Manifest(frame, root="."), fractions=[("train", 0.8), ("val", 0.2)])
    assert raised.value.problems == ["image a: split test", "image b: no split"]
