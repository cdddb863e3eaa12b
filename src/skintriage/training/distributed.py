"""Process-group plumbing for ``torchrun`` (DistributedDataParallel), kept out of the training loop.

``torchrun --nproc_per_node N -m skintriage.training.loop CONFIG`` starts N copies of the training script and
tells each who it is through environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_distributed` reads them and joins the process group:
NCCL when the run trains on CUDA (one GPU per process, the local rank's), gloo on CPU. Without those
variables (``skintriage train``, ``python -m skintriage.training.loop``) it does nothing and every helper
here behaves as a world of one, so the training loop needs no ``if distributed`` around them.

The sampler that shards a class-balanced draw over ranks lives in :mod:`skintriage.data.samplers`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# How long a rank waits at a collective: the others wait while rank 0 validates and checkpoints an epoch.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    """Where this process stands: its global rank, the number of processes, its rank on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0 alone logs, checkpoints and writes the bundle, so files are never written twice."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group ``torchrun`` set up; returns the world and this process's device.

    On CUDA each process takes the GPU of its local rank (``cuda:LOCAL_RANK``), whatever index the
    config named, because N processes on one GPU would only contend for it. A world of one (no
    ``torchrun``, or ``--nproc_per_node 1``) joins no group, so it is exactly a single-process run.
    Calling it again (``main`` and then ``train``) is harmless.
    """
    if not launched_by_torchrun():
        return World(), device
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if world.distributed and not is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=TIMEOUT, device_id=device if cuda else None)
    return world, device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def current_world() -> World:
    if not is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def is_main_process() -> bool:
    return current_world().main


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` as rank ``src`` has it, on every rank (e.g. rank 0's early-stopping count)."""
    if not is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over ranks (e.g. loss and counts, so the logged training loss covers every shard)."""
    if not is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when in a process group (``device_ids`` only on CUDA), else as is."""
    if not is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module DDP wraps: its ``state_dict`` has no ``module.`` prefixes, like a single-process run's."""
    return model.module if isinstance(model, DistributedDataParallel) else model
