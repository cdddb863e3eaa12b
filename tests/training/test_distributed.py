"""Distributed training: the class-balanced sampler's shards, and a real two-process ``torchrun`` run on CPU (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

import skintriage.training.loop
from skintriage.data.samplers import DistributedWeightedSampler
from skintriage.model.bundle import load_bundle
from skintriage.training.config import ConfigError, load_config
from skintriage.training.distributed import World
from skintriage.training.loop import LOG_FILE, local_batch_size
from tests.training.test_train import read_log, write_config

# 3 classes of 60, 12 and 3 images: balanced sampling weighs each image by 1 / (its class's count).
LABELS = np.repeat([0, 1, 2], [60, 12, 3])
WEIGHTS = torch.tensor(1.0 / np.bincount(LABELS)[LABELS], dtype=torch.float64)


def shards(world_size: int, *, num_samples: int = len(LABELS), seed: int = 7, epoch: int = 0) -> list[list[int]]:
    samplers = [
        DistributedWeightedSampler(WEIGHTS, num_samples, num_replicas=world_size, rank=rank, seed=seed)
        for rank in range(world_size)
    ]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [list(sampler) for sampler in samplers]


def single_process_draw(num_samples: int = len(LABELS), *, seed: int = 7, epoch: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed + epoch)
    return list(WeightedRandomSampler(WEIGHTS, num_samples, replacement=True, generator=generator))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_the_shards_interleave_back_into_the_single_process_draw(world_size: int) -> None:
    parts = shards(world_size, epoch=3)
    merged = [parts[i % world_size][i // world_size] for i in range(world_size * len(parts[0]))]
    draw = single_process_draw(epoch=3)
    assert merged[: len(draw)] == draw
    assert merged[len(draw) :] == draw[: len(merged) - len(draw)]  # padding repeats the draw's start


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_every_rank_gets_the_same_number_of_indices(world_size: int) -> None:
    parts = shards(world_size)
    lengths = {len(part) for part in parts}
    assert lengths == {-(-len(LABELS) // world_size)}
    sampler = DistributedWeightedSampler(WEIGHTS, len(LABELS), num_replicas=world_size, rank=world_size - 1)
    assert len(sampler) == len(list(sampler)) == lengths.pop()


def test_each_rank_sees_the_classes_balanced() -> None:
    for part in shards(2, num_samples=6000):
        counts = Counter(LABELS[part].tolist())
        assert all(abs(counts[c] / len(part) - 1 / 3) < 0.04 for c in range(3)), counts


def test_the_draw_changes_with_the_epoch_and_repeats_for_the_same_one() -> None:
    assert shards(2, epoch=1) == shards(2, epoch=1)
    assert shards(2, epoch=1) != shards(2, epoch=2)


def test_a_bad_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        DistributedWeightedSampler(WEIGHTS, 10, num_replicas=2, rank=2)


def test_the_global_batch_is_split_over_the_ranks(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, batch_size=8))
    assert local_batch_size(config, World()) == 8
    assert local_batch_size(config, World(rank=1, size=4)) == 2
    with pytest.raises(ConfigError, match="global batch"):
        local_batch_size(config, World(rank=0, size=3))


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ``torchrun`` of two CPU processes writes one run folder and a bundle as good as one process's.

    With 42 training and 6 validation images, "as good" is loose: both must learn the colour casts
    (best validation balanced accuracy at least 2/3 where chance is 1/3, AUC near 1) and differ by at
    most two validation images. The runs cannot match exactly: each rank normalises its batch over
    4 images instead of 8 and draws its own augmentations.
    """
    config_path = write_config(tmp_path, epochs=4, imbalance="sampler")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "skintriage.training.loop", str(config_path), "--out", str(tmp_path / "ddp")]
    started = time.perf_counter()
    result = subprocess.run(command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    ddp_seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # rank 0 alone printed, logged and bundled
    assert result.stdout.count("epoch   1 ") == 1 and result.stdout.count("bundle written to") == 1
    assert "2 processes of 4 images a step" in result.stdout
    assert sorted(p.name for p in (tmp_path / "ddp").rglob(LOG_FILE)) == [LOG_FILE]
    assert not list((tmp_path / "ddp").rglob("*.tmp"))
    bundle = load_bundle(tmp_path / "ddp" / "bundle")
    assert bundle.classes == ["mel", "bcc", "nv"]
    assert not any(key.startswith("module.") for key in bundle.model.state_dict())
    assert bundle.metadata.metrics["folder"]["balanced_accuracy"] >= 0.6  # 48 held-out images, chance 1/3

    # the same config in one process; its calibration and evaluation are not needed for the comparison
    monkeypatch.setattr(skintriage.training.loop, "finish", lambda *args, **kwargs: None)
    started = time.perf_counter()
    skintriage.training.loop.train(load_config(config_path), out=tmp_path / "single", progress=False)
    single_seconds = time.perf_counter() - started
    print(f"2 processes: {ddp_seconds:.0f}s with finishing; 1 process: {single_seconds:.0f}s without")

    ddp, single = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    assert len(ddp) == len(single) == 4
    assert float(ddp[-1]["train_loss"]) < float(ddp[0]["train_loss"])
    best = {
        name: max(float(row["val_balanced_accuracy"]) for row in log) for name, log in [("ddp", ddp), ("1", single)]
    }
    assert min(best.values()) >= 2 / 3 - 1e-9, best
    assert abs(best["ddp"] - best["1"]) <= 1 / 3 + 1e-9, best
    assert all(max(float(row["val_macro_auc"]) for row in log) >= 0.9 for log in (ddp, single))
