"""Training: ``skintriage train configs/<name>.yaml`` (see :mod:`skintriage.training.config` for the fields).

Read top to bottom, a run is:

1. **Data.** Each source in the config is loaded into a manifest and split with the project's
   grouped split (patient, lesion, identical and near-identical images never straddle splits); the
   sources are combined (:mod:`skintriage.training.data`) and the split written to ``splits.csv``.
2. **Model and optimiser.** ``create_model`` with a head for the classes present in training;
   AdamW (or SGD) without weight decay on norms and biases, per-step learning rate with a linear
   warm-up and a cosine decay (:mod:`skintriage.training.optim`); an exponential moving average (EMA) of the
   weights.
3. **Epochs.** Class imbalance is corrected by a weighted loss *or* a class-balanced sampler (never
   both); optional mixup/cutmix; label smoothing. After each epoch the EMA weights are scored on the
   validation split (balanced accuracy chooses the best epoch and drives early stopping), a row is
   added to ``log.csv`` and the complete training state (:class:`~skintriage.training.state.TrainingState`) is
   saved to ``last.pt``.
4. **Finish** (:mod:`skintriage.training.finish`). The best weights are rounded as the bundle stores them,
   calibrated on validation (temperature, referral threshold; pooled, then per acquisition type), given their
   referral gates (:mod:`skintriage.training.gates`: urgent threshold, uncertainty gate, the dermoscopic-or-clinical
   classifier) and written as a bundle (``bundle/``); then every test set is evaluated and reported
   (``eval/<name>/``). Test sets choose nothing.

**Resuming.** Rerunning the same command on the same ``--out`` folder continues after the last
completed epoch (:mod:`skintriage.training.state`). Every epoch reseeds the augmentation and the sampler from ``(seed, epoch)``, so a
resumed run follows the same path as an uninterrupted one; work inside the interrupted epoch is lost.
A different config in the same folder is refused rather than silently mixed.

**Several processes.** ``torchrun --nproc_per_node N -m skintriage.training.loop CONFIG --out DIR`` trains with
DistributedDataParallel (:mod:`skintriage.training.distributed`; NCCL on GPUs, gloo on CPU). Every rank loads
and splits the data the same way and builds the same model; ``batch_size`` is the *global* batch,
``batch_size / N`` images per rank per step, so the steps per epoch, the learning-rate schedule and
the results match a single-process run. Each rank trains on its shard of the epoch's sample (a
``DistributedSampler`` permutation, or with ``imbalance: sampler`` its share of the one class-balanced
draw, :class:`~skintriage.data.samplers.DistributedWeightedSampler`). Rank 0 alone validates, logs,
checkpoints and finishes (calibration, gates, bundle, evaluation), and broadcasts the early-stopping
count so that every rank stops at the same epoch; every rank resumes from ``last.pt``. Batch
normalisation statistics are per rank (no SyncBatchNorm), as in torchvision's reference recipes.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm.auto import tqdm

from skintriage import metrics
from skintriage.common.atomic import atomic_path, atomic_write_text
from skintriage.data.dataset import ManifestDataset
from skintriage.data.presets import ClassificationPresetEval, ClassificationPresetTrain
from skintriage.data.samplers import DistributedWeightedSampler
from skintriage.data.taxonomy import DIAGNOSES
from skintriage.evaluation.evaluate import multiclass_block
from skintriage.inference.batch import predict_logits, resolve_device
from skintriage.model.registry import create_model, normalization_for
from skintriage.training.config import ConfigError, TrainConfig, load_config, parse_overrides
from skintriage.training.data import TrainingData, training_manifest
from skintriage.training.distributed import (
    World,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    is_main_process,
    unwrap,
    wrap,
)
from skintriage.training.finish import finish
from skintriage.training.imbalance import sample_weights
from skintriage.training.optim import learning_rate, make_optimizer, set_learning_rate
from skintriage.training.state import BEST_FILE, LOG_FILE, SPLITS_FILE, STATE_FILE, TrainingState, resume_state

# --- 1. data ----------------------------------------------------------------------------------------


def class_names_for(config: TrainConfig, train_frame: pd.DataFrame) -> list[str]:
    if config.classes is not None:
        return list(config.classes)
    present = set(train_frame["diagnosis"])
    return [code for code in DIAGNOSES if code in present]


def data_summary(data: TrainingData) -> dict:
    frame = data.manifest.frame
    counts = frame.groupby(["source", "split"]).size()
    train = data.manifest.where(split="train").frame
    rated = train["skin_type"].notna()
    return {
        "sources": data.policies,
        "cross_source_duplicates_moved": [move.to_dict() for move in data.cross_source_moves],
        "images": {f"{source}/{split}": int(n) for (source, split), n in counts.items()},
        "diagnoses_train": {
            k: int(v) for k, v in data.manifest.where(split="train").frame.diagnosis.value_counts().items()
        },
        "acquisition": {k: int(v) for k, v in frame.acquisition.value_counts().items()},
        # Fitzpatrick types where a source rates them (most record none): what the model card can say of skin types
        "skin_types_train": {
            **{k: int(v) for k, v in sorted(train.loc[rated, "skin_type"].value_counts().items())},
            "unrecorded": int((~rated).sum()),
        },
        "skin_type_sources_train": sorted(train.loc[rated, "source"].unique().tolist()),
    }


# --- 2. seeds and batch --------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(config: TrainConfig, epoch: int) -> int:
    return config.seed * 100_003 + epoch


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the single-process seed; every other rank its own augmentation stream, far from any epoch's."""
    return seed + rank * 2**40


def local_batch_size(config: TrainConfig, world: World) -> int:
    """Images per rank per step: ``batch_size`` is the global batch, split evenly over the ranks.

    Keeping the global batch fixed keeps the steps per epoch, and so the learning-rate schedule and
    the effective batch the learning rate was tuned for, the same as a single-process run.
    """
    if config.batch_size % world.size:
        raise ConfigError(
            f"batch_size {config.batch_size} is the global batch and must divide evenly over {world.size} processes"
        )
    return config.batch_size // world.size


# --- 3. epochs --------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one epoch needs; built once by :func:`train`."""

    config: TrainConfig
    model: nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    train_set: ManifestDataset
    val_loader: DataLoader
    loss_weight: torch.Tensor | None
    mix: v2.Transform | None
    device: torch.device
    progress: bool
    world: World = field(default_factory=World)  # rank and number of processes; one by default

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else unwrap(self.model)


def build_run(
    config: TrainConfig,
    *,
    train_set: ManifestDataset,
    val_loader: DataLoader,
    device: torch.device,
    world: World | None = None,
    progress: bool = True,
) -> Run:
    """A fresh model (channels-last, wrapped in DDP under torchrun), its EMA, optimiser, loss weight and mixing.

    The one place a run is assembled: :func:`train` and the training benchmark (``skintriage bench``) both use it.
    """
    world = world or World()
    classes = len(train_set.class_names)
    model = create_model(
        config.model,
        num_classes=classes,
        input_size=config.input_size,
        stem=config.stem,
        pretrained=config.pretrained,
    )
    model = model.to(device).to(memory_format=torch.channels_last)
    ema = None
    if config.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    mixes = [
        mixer(alpha=alpha, num_classes=classes)
        for alpha, mixer in ((config.mixup_alpha, v2.MixUp), (config.cutmix_alpha, v2.CutMix))
        if alpha > 0
    ]
    return Run(
        config=config,
        model=wrap(model, device),  # DistributedDataParallel under torchrun, else the bare module
        ema=ema,
        optimizer=make_optimizer(config, model),
        train_set=train_set,
        val_loader=val_loader,
        loss_weight=train_set.class_weights(config.imbalance_power).to(device) if config.imbalance == "loss" else None,
        mix=v2.RandomChoice(mixes) if mixes else None,
        device=device,
        progress=progress,
        world=world,
    )


def train_sampler(run: Run, epoch: int, generator: torch.Generator) -> Sampler[int]:
    """The epoch's order of training images: class-balanced with ``imbalance: sampler``, else a shuffle.

    With several ranks each gets its shard of one draw seeded by ``(seed, epoch)`` alike on every rank.
    """
    config, world = run.config, run.world
    balanced = config.imbalance == "sampler"
    weights = sample_weights(config, run.train_set) if balanced else None
    if not world.distributed:
        if balanced:
            return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
        return RandomSampler(run.train_set, generator=generator)
    seed, rank, size = epoch_seed(config, 0), world.rank, world.size
    if balanced:
        sampler = DistributedWeightedSampler(weights, len(weights), num_replicas=size, rank=rank, seed=seed)
    else:
        sampler = DistributedSampler(run.train_set, num_replicas=size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)  # seed + epoch == epoch_seed(config, epoch)
    return sampler


def train_loader(run: Run, epoch: int) -> DataLoader:
    config = run.config
    seed = rank_seed(epoch_seed(config, epoch), run.world.rank)
    generator = torch.Generator().manual_seed(seed)  # also seeds DataLoader workers: per rank
    run.train_set.transform.reseed(seed)
    torch.manual_seed(epoch_seed(config, epoch))  # mixup/cutmix draw from the global generator: alike on all ranks
    return DataLoader(
        run.train_set,
        batch_size=local_batch_size(config, run.world),
        sampler=train_sampler(run, epoch, generator),
        num_workers=config.num_workers,
        drop_last=True,
        generator=generator,
        pin_memory=run.device.type == "cuda",
    )


def train_one_epoch(run: Run, epoch: int, step: int) -> tuple[dict, int]:
    config, model, device = run.config, run.model, run.device
    loader = train_loader(run, epoch)
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not run.progress)
    for images, labels, _ in bar:
        lr = learning_rate(config, step, len(loader))
        set_learning_rate(run.optimizer, lr)
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        targets = labels
        if run.mix is not None:
            images, targets = run.mix(images, labels)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or config.bf16_autocast):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, weight=run.loss_weight, label_smoothing=config.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; lower lr")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
        run.optimizer.step()
        if run.ema is not None:  # weights are identical on every rank after the all-reduce, so are the EMAs
            run.ema.update_parameters(unwrap(model))
        step += 1
        total_loss += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.2e}")
    total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], device)  # every rank's shard
    return {"train_loss": total_loss / seen, "train_accuracy": correct / seen, "lr": lr}, step


def validation_metrics(run: Run) -> dict:
    logits, labels, _ = predict_logits(run.eval_model, run.val_loader, device=run.device)
    probabilities = torch.softmax(torch.from_numpy(logits), 1).numpy()
    names = run.train_set.class_names
    block = multiclass_block(labels, probabilities, np.ones(len(labels)))
    score = metrics.malignancy_score(probabilities, names)
    return {
        "val_loss": float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()),
        "val_balanced_accuracy": block["balanced_accuracy"],
        "val_accuracy": block["accuracy"],
        "val_macro_auc": block["macro_auc"],
        "val_referral_auc": metrics.referral_roc_auc(score, metrics.malignant_columns(names)[labels]),
        "val_ece": block["ece"],
    }


def write_log(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, pd.DataFrame(history).to_csv(index=False))


def save_weights(path: Path, model: nn.Module) -> None:
    """The evaluation weights as safetensors, atomically: what the finish step bundles (``best.safetensors``)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))


# --- the run ----------------------------------------------------------------------------------------


def say(message: str) -> None:
    """``print`` on rank 0 only, so N processes do not print N copies."""
    if is_main_process():
        print(message, flush=True)


def train(config: TrainConfig, *, out: Path, data_root: Path | None = None, progress: bool = True) -> Path:
    """Train (or resume) the run in ``out``; returns the calibrated bundle folder.

    Under ``torchrun`` every rank calls this; rank 0 writes every file and the bundle, the other ranks
    return the bundle's path as soon as training ends, without waiting for rank 0 to finish it.
    """
    world, device = init_distributed(resolve_device(config.device))
    local_batch_size(config, world)  # refuse a global batch that does not divide over the ranks, now
    progress = progress and world.main
    out.mkdir(parents=True, exist_ok=True)
    resumed = resume_state(out, config)  # refuses a folder of another config, before any data is read
    if world.main:
        atomic_write_text(out / "config.json", json.dumps(config.model_dump(), indent=2) + "\n")
    seed_everything(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)

    data = training_manifest(config, data_root=data_root, progress=progress)
    manifest = data.manifest
    columns = ["image_id", "source", "diagnosis", "triage_group", "acquisition", "split"]
    if world.main:
        atomic_write_text(out / SPLITS_FILE, manifest.frame[columns].to_csv(index=False))
    class_names = class_names_for(config, manifest.where(split="train").frame)
    summary = data_summary(data)
    masked = [s.name for s in config.sources if s.mask_watermark]
    train_set = ManifestDataset(
        manifest.where(split="train", diagnoses=class_names),
        transform=ClassificationPresetTrain(
            input_size=config.input_size, normalization=normalization_for(config.model), seed=config.seed
        ),
        class_names=class_names,
        mask_watermark_sources=masked,
        cache_side=config.cache_side,
    )
    val_set = ManifestDataset(
        manifest.where(split="val", diagnoses=class_names),
        transform=ClassificationPresetEval(input_size=config.input_size, normalization=normalization_for(config.model)),
        class_names=class_names,
        mask_watermark_sources=masked,
        cache_side=config.cache_side,
    )
    run = build_run(
        config,
        train_set=train_set,
        val_loader=DataLoader(val_set, batch_size=config.batch_size * 2, num_workers=config.num_workers),
        device=device,
        world=world,
        progress=progress,
    )
    model, ema = unwrap(run.model), run.ema

    state = resumed or TrainingState(config=config.model_dump())
    if resumed is not None:
        state.restore(model=model, ema=ema, optimizer=run.optimizer)
        say(
            f"resuming {out} after epoch {state.epoch} of {config.epochs} "
            f"(best val balanced accuracy {state.best_score:.4f})"
        )

    say(
        f"training {config.model} on {len(train_set)} images ({', '.join(class_names)}), validating on "
        f"{len(val_set)}; {device}, {torch.get_num_threads()} threads"
        + (f", {world.size} processes of {local_batch_size(config, world)} images a step" if world.distributed else "")
    )
    for epoch in range(state.epoch, config.epochs):
        if config.early_stopping_patience is not None and state.stale_epochs >= config.early_stopping_patience:
            break
        started = time.perf_counter()
        row, state.step = train_one_epoch(run, epoch, state.step)
        if world.main:  # rank 0 alone validates, logs and checkpoints; the other ranks wait for its verdict
            row = {"epoch": epoch + 1, **row, **validation_metrics(run), "seconds": time.perf_counter() - started}
            state.history.append(row)
            write_log(out / LOG_FILE, state.history)
            if row["val_balanced_accuracy"] > state.best_score:
                state.best_score, state.stale_epochs = row["val_balanced_accuracy"], 0
                save_weights(out / BEST_FILE, run.eval_model)
            else:
                state.stale_epochs += 1
            state.epoch = epoch + 1
            state.capture(model=model, ema=ema, optimizer=run.optimizer)
            state.save(out / STATE_FILE)
            print(
                f"epoch {epoch + 1:3d}  loss {row['train_loss']:.3f}  val bal. acc {row['val_balanced_accuracy']:.4f}  "
                f"macro AUC {row['val_macro_auc']:.4f}  referral AUC {row['val_referral_auc']:.4f}  "
                f"{row['seconds']:.0f}s" + ("  *" if state.stale_epochs == 0 else ""),
                flush=True,
            )
        # so every rank stops early at the same epoch, or none does
        state.stale_epochs = broadcast_object(state.stale_epochs)
    barrier()
    if not world.main:
        return out / "bundle"
    return finish(config, out, manifest, class_names, summary, data_root=data_root, progress=progress)


def main(argv: list[str] | None = None) -> None:
    """``python -m skintriage.training.loop CONFIG [--out DIR] [--data-root DIR]``: the entry point for ``torchrun``.

    ``skintriage train`` is the everyday command; this one exists because ``torchrun -m`` needs a module
    to run, and it takes the same arguments.
    """
    parser = argparse.ArgumentParser(prog="python -m skintriage.training.loop", description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="YAML config, e.g. configs/benchmark_cpu.yaml")
    parser.add_argument("--out", type=Path, help="run folder (default runs/<config name>)")
    parser.add_argument("--data-root", type=Path, help="overrides the config's data_root")
    parser.add_argument("--epochs", type=int, help="overrides the config's epochs")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, **{"epochs": args.epochs, **parse_overrides(args.set)})
        bundle = train(config, out=args.out or Path("runs") / config.name, data_root=args.data_root)
        say(f"bundle written to {bundle}")
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
