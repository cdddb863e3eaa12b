"""Training throughput: the real ``train_one_epoch`` vs a plain reference loop vs the model alone.

*Ours* is :func:`skintriage.training.loop.train_one_epoch` on a :class:`~skintriage.training.loop.Run` assembled from
the training loop's public pieces exactly as :func:`~skintriage.training.loop.train` assembles it (config, preset,
dataset with its decode cache, channels-last model, EMA, optimiser, sampler), over a manifest of
``steps x batch_size`` images, so one call is ``steps`` optimiser steps. The decode cache is filled
before timing, as it is from the second epoch of a real run on.

*Reference* is :mod:`skintriage.bench.references`' MedMNIST-style loop on the same files and the same
architecture: PIL + torchvision transforms from disk every step, a default DataLoader, Adam, no EMA.

*Model only* is forward + backward + optimiser step + EMA update of the same architecture on a fixed,
pre-made batch: the ceiling for any data pipeline. ``ours / model_only`` close to 1 shows the data
pipeline is not the bottleneck.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from skintriage.bench import references
from skintriage.bench.inference import native_bfloat16
from skintriage.bench.samples import TrainingImages
from skintriage.common.errors import InsufficientDataError
from skintriage.common.timing import interleaved, ratio
from skintriage.data.dataset import ManifestDataset
from skintriage.data.presets import ClassificationPresetTrain
from skintriage.inference.batch import resolve_device
from skintriage.model.registry import create_model, normalization_for
from skintriage.training import loop as train
from skintriage.training.config import TrainConfig
from skintriage.training.loop import Run, class_names_for, train_one_epoch
from skintriage.training.optim import make_optimizer

TRAINING_TARGET_RATIO = 1.5


def build_run(config: TrainConfig, training: TrainingImages, *, device: torch.device) -> Run:
    """A :class:`Run` over ``training.manifest`` as :func:`skintriage.training.loop.train` builds one (no validation:
    ``train_one_epoch`` does not validate, so the validation loader is empty)."""
    train_set = ManifestDataset(
        training.manifest,
        transform=ClassificationPresetTrain(
            input_size=config.input_size, normalization=normalization_for(config.model), seed=config.seed
        ),
        class_names=class_names_for(config, training.manifest.frame),
        mask_watermark_sources=[s.name for s in config.sources if s.mask_watermark],
        cache_side=config.cache_side,
    )
    return train.build_run(config, train_set=train_set, val_loader=DataLoader([]), device=device, progress=False)


def model_only_step(config: TrainConfig, *, num_classes: int, device: torch.device, bfloat16: bool = False):
    """A closure running one optimiser step of a fresh model on a fixed batch (channels-last, EMA, AdamW)."""
    model = create_model(config.model, num_classes=num_classes, input_size=config.input_size, stem=config.stem)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay or 0.998), use_buffers=True)
    optimizer = make_optimizer(config, model)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(config.batch_size, 3, config.input_size, config.input_size, generator=generator)
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (config.batch_size,), generator=generator).to(device)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=bfloat16):
            loss = F.cross_entropy(model(images), labels, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if config.ema_decay is not None:
            ema.update_parameters(model)

    return step


def training_throughput(
    config: TrainConfig, training: TrainingImages, *, steps: int, warmup: int, repeats: int, progress: bool = True
) -> dict:
    """Images/s of ours, the reference loop and the model alone, each run ``steps`` steps per timed call."""
    device = resolve_device(config.device)
    images = steps * config.batch_size
    if len(training.manifest) < images:
        raise InsufficientDataError(f"need {images} training images for {steps} steps of {config.batch_size}")
    run = build_run(config, training, device=device)
    for row in range(len(run.train_set)):  # fill the decode cache, as epoch 1 of a real run does
        run.train_set.pixels(row)
    paths = [Path(training.manifest.root) / location for location in training.manifest.frame["image"]]
    reference_model, reference_optimizer, reference_loader = references.training_setup(
        create_model(
            config.model, num_classes=run.train_set.num_classes, input_size=config.input_size, stem=config.stem
        ),
        paths,
        run.train_set.labels.tolist(),
        size=config.input_size,
        batch_size=config.batch_size,
    )
    model_step = model_only_step(config, num_classes=run.train_set.num_classes, device=device)

    def model_only(round_: int) -> None:
        for _ in range(steps):
            model_step()

    timings = interleaved(
        {
            "ours": lambda r: train_one_epoch(run, r, r * steps),
            "reference": lambda r: references.train_epoch(reference_model, reference_optimizer, reference_loader),
            "model_only": model_only,
        },
        warmup=warmup,
        repeats=repeats,
        items={"ours": images, "reference": images, "model_only": images},
        description="training",
        progress=progress,
    )
    ours, reference, ceiling = (timings[n].per_second for n in ("ours", "reference", "model_only"))
    return {
        "images": training.origin,
        "config": {
            "model": config.model,
            "input_size": config.input_size,
            "batch_size": config.batch_size,
            "optimizer": config.optimizer,
            "ema_decay": config.ema_decay,
            "imbalance": config.imbalance,
            "cache_side": config.cache_side,
        },
        "steps_per_run": steps,
        "ours": timings["ours"].throughput(),
        "reference": timings["reference"].throughput(),
        "model_only": timings["model_only"].throughput(),
        "ratio": ratio(ours, reference),
        "target_ratio": TRAINING_TARGET_RATIO,
        "meets_target": ratio(ours, reference) >= TRAINING_TARGET_RATIO,
        "ours_over_model_only": ratio(ours, ceiling),
        "device": str(device),
        "bfloat16_autocast": bfloat16_model_only(
            config, run, device=device, steps=steps, warmup=warmup, repeats=repeats
        ),
    }


def bfloat16_model_only(
    config: TrainConfig, run: Run, *, device: torch.device, steps: int, warmup: int, repeats: int
) -> dict:
    """Model-only images/s under bfloat16 autocast next to float32, where the hardware has bfloat16 (a CUDA GPU
    or a CPU with AVX-512 BF16 / AMX); elsewhere why it was not timed (emulated bfloat16 is many times slower)."""
    if device.type == "cpu" and not native_bfloat16():
        return {"skipped": "this CPU has no native bfloat16 instructions (AVX-512 BF16 or AMX); emulated bfloat16 "
                "is many times slower (the variants section times the forward pass)"}  # fmt: skip
    steps_by_precision = {
        name: model_only_step(config, num_classes=run.train_set.num_classes, device=device, bfloat16=name == "bfloat16")
        for name in ("float32", "bfloat16")
    }
    timings = interleaved(
        {name: (lambda _, step=step: [step() for _ in range(steps)]) for name, step in steps_by_precision.items()},
        warmup=warmup,
        repeats=repeats,
        items=dict.fromkeys(steps_by_precision, steps * config.batch_size),
        description="bfloat16",
        progress=False,
    )
    return {name: timing.throughput() for name, timing in timings.items()}
