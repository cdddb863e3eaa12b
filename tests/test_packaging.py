"""The package as pip installs it: a wheel built from this tree carries its data files, and a non-editable install
of it predicts with the bundled model from anywhere, with no source checkout on the path.

An editable install (the README's ``pip install -e``) reads every file from ``src/``, so a data file missing from
``[tool.setuptools.package-data]``, or a path computed from the checkout around the package, only shows up here:
the wheel is built from a copy of the tree (pyproject, README, ``src/``), installed with ``pip --target`` into a
temporary folder, and run with only that folder on ``PYTHONPATH`` and the working directory outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from skintriage import DISCLAIMER, __version__
from skintriage.common.paths import DEFAULT_BUNDLE, PACKAGE_DIR
from skintriage.triage.referral import Level
from tests.helpers import REPO
from tests.helpers.hostile_files import lesion

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
# The bundled model's files, as package data, with its default variant's model.onnx (the int8 export is not shipped).
MODEL_FILES = ("model.json", "model.safetensors", "uncertainty.safetensors", "acquisition.safetensors", "MODEL_CARD.md",
               "model.onnx")  # fmt: skip

pytestmark = pytest.mark.slow  # builds and installs a wheel (about 25 s on 2 shared cores)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built, offline and without build isolation, from a copy of the tree (so no build/ lands in it)."""
    if not all((DEFAULT_BUNDLE / name).is_file() for name in MODEL_FILES):
        pytest.skip(f"no bundled model at {DEFAULT_BUNDLE}")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(source)])
    (built,) = out.glob("skintriage-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    """The wheel installed non-editable into its own folder (dependencies come from the running environment)."""
    target = tmp_path_factory.mktemp("site")
    run([*PIP, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)])
    return target


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python args`` with only the installed folder on PYTHONPATH, from a folder outside the repository."""
    env = {**os.environ, "PYTHONPATH": str(target), "COLUMNS": "400"}  # wide: rich wraps nothing
    return run([sys.executable, *args], cwd=cwd, env=env)


def test_the_wheel_carries_the_label_maps_the_guidance_and_the_bundled_model(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    data_files = [
        *sorted((PACKAGE_DIR / "data" / "label_maps").glob("*.yaml")),
        *sorted((PACKAGE_DIR / "triage" / "guidance").rglob("*.yaml")),
        *(DEFAULT_BUNDLE / name for name in MODEL_FILES),
    ]
    assert len(data_files) > len(MODEL_FILES) + 2
    expected = {path.relative_to(PACKAGE_DIR.parent).as_posix() for path in data_files}
    assert expected <= names, sorted(expected - names)
    assert [name for name in names if name.endswith(".onnx")] == ["skintriage/model/default/model.onnx"]
    assert wheel.name.startswith(f"skintriage-{__version__}-")  # the version pyproject reads from __init__


def test_an_installed_package_predicts_with_its_bundled_model(installed: Path, tmp_path: Path) -> None:
    where = run_installed(
        installed,
        tmp_path,
        "-c",
        "import skintriage, skintriage.common.paths as paths; print(skintriage.__file__); print(paths.DEFAULT_BUNDLE)",
    )
    package_file, bundle = (Path(line) for line in where.stdout.splitlines())
    assert package_file.is_relative_to(installed) and bundle == installed / "skintriage" / "model" / "default"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(MODEL_FILES)

    photo = tmp_path / "lesion.png"
    lesion().save(photo)
    done = run_installed(installed, tmp_path, "-m", "skintriage.cli", "predict", str(photo))
    output = " ".join(done.stdout.split())
    assert any(output.startswith(f"{photo}: {level.name} (malignancy probability") for level in Level), output
    assert " ".join(DISCLAIMER.split()) in output
