"""Training end to end on small generated data: a run, its bundle and reports, and resuming after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from skintriage.model.bundle import load_bundle
from skintriage.training.config import ConfigError, load_config
from skintriage.training.loop import LOG_FILE, SPLITS_FILE, STATE_FILE, train
from skintriage.training.state import TrainingState

# Each class has its own colour cast, so that a tiny model can learn something in a few epochs.
CLASS_COLOURS = {"mel": (90, 50, 40), "bcc": (200, 120, 140), "nv": (150, 110, 70)}
PER_CLASS = 16


def write_dataset(root: Path, *, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for label, colour in CLASS_COLOURS.items():
        for i in range(PER_CLASS):
            noise = rng.normal(0, 30, size=(40, 48, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / label / f"{label}_{i}.png")
    return root


def write_config(tmp_path: Path, **fields: object) -> Path:
    data_root = tmp_path / "data"
    write_dataset(data_root / "train_folder", seed=1)
    write_dataset(data_root / "test_folder", seed=2)
    config = {
        "name": "smoke",
        "data_root": str(data_root),
        "sources": [{"name": "folder", "root": "train_folder"}],
        "test_sources": [{"name": "folder", "root": "test_folder"}],
        "model": "resnet18",
        "input_size": 32,
        "cache_side": 40,
        "epochs": 3,
        "batch_size": 8,
        "lr": 0.002,
        "warmup_epochs": 1,
        "ema_decay": 0.9,  # a handful of steps: a slow average would still be the initial weights
        "seed": 3,
        **fields,
    }
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def read_log(run: Path) -> list[dict]:
    with (run / LOG_FILE).open(encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_a_training_run_writes_a_calibrated_bundle_and_reports(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    bundle_dir = train(config, out=tmp_path / "run", progress=False)

    log = read_log(tmp_path / "run")
    assert [int(row["epoch"]) for row in log] == [1, 2, 3]
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    bundle = load_bundle(bundle_dir)
    assert bundle.classes == ["mel", "bcc", "nv"]  # taxonomy order
    calibration = bundle.metadata.calibration.to_json_dict()
    assert calibration["temperature"] > 0  # 6 validation images, all right: any T at the lower bound fits
    assert calibration["validation"]["referral_sensitivity"] >= 0.95
    assert set(bundle.metadata.metrics) == {"validation", "folder"}
    for name in ("validation", "folder"):
        folder = tmp_path / "run" / "eval" / name
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        for key in ("n_images", "accuracy", "balanced_accuracy", "macro_auc", "ece", "referral", "per_class", "ci95"):
            assert key in metrics, (name, key)
        assert {"sensitivity", "specificity", "threshold"} <= set(metrics["referral"])
        assert (folder / "report.md").is_file() and (folder / "reliability.png").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "eval" / "folder" / "metrics.json").read_text())["n_images"] == 48
    assert (bundle_dir / "model.safetensors").stat().st_size < 25e6


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, epochs=4)
    config = load_config(config_path)
    train(config, out=tmp_path / "straight", progress=False)

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "skintriage.cli", "train", str(config_path), "--out", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / STATE_FILE).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_after = TrainingState.load(killed / STATE_FILE).epoch
    assert 1 <= interrupted_after < 4, "the kill should land inside the run"

    train(config, out=killed, progress=False)

    assert read_log(killed) == read_log(tmp_path / "straight")
    assert (killed / "bundle" / "model.json").is_file()


def test_a_run_folder_refuses_a_different_config(tmp_path: Path) -> None:
    """The refusal needs only the saved state, not a training run: ``train`` checks it before reading any data."""
    config = load_config(write_config(tmp_path, epochs=1))
    run = tmp_path / "run"
    run.mkdir()
    TrainingState(config=config.model_dump(), epoch=1).save(run / STATE_FILE)
    with pytest.raises(ConfigError, match="different config"):
        train(config.model_copy(update={"lr": 0.01}), out=run, progress=False)
    assert not (run / SPLITS_FILE).exists()  # refused before the data was loaded and split
