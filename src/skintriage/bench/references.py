"""The plain reference implementations our paths are measured against: the code one would write first.

They follow the common PyTorch tutorial / MedMNIST style on purpose: ``PIL.Image.open`` and
``torchvision.transforms`` per image, an eager model, one image at a time for prediction, and a default
``DataLoader`` (shuffle, no workers) that reads and augments every image from disk on every step for
training, with a plain optimiser step and no EMA. They are deliberately *not* tuned; a speed-up is only
worth reporting against what a reasonable first version does. They use the same weights (prediction)
or the same architecture (training) as ours, so the difference is the pipeline, not the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from skintriage.data.presets import IMAGENET_NORMALIZATION, Normalization


def eval_transform(size: int, normalization: Normalization = IMAGENET_NORMALIZATION) -> T.Compose:
    """Resize(size) + CenterCrop(size) + ToTensor + Normalize: the textbook evaluation transform."""
    return T.Compose(
        [T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(normalization.mean, normalization.std)]
    )


def train_transform(size: int) -> T.Compose:
    """RandomResizedCrop + horizontal flip + ToTensor + Normalize: the textbook training transform."""
    return T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_NORMALIZATION.mean, IMAGENET_NORMALIZATION.std),
        ]
    )


def predict_folder(
    model: nn.Module, paths: Sequence[Path], *, size: int, normalization: Normalization = IMAGENET_NORMALIZATION
) -> list[np.ndarray]:
    """Softmax probabilities for each file, one at a time: open, transform, forward (batch 1, no threads)."""
    transform = eval_transform(size, normalization)
    model.eval()
    out = []
    with torch.no_grad():
        for path in paths:
            image = Image.open(path).convert("RGB")
            logits = model(transform(image).unsqueeze(0))
            out.append(torch.softmax(logits, dim=1)[0].numpy())
    return out


class ImageFolderDataset(Dataset):
    """(image tensor, label) for files and integer labels; each item is read from disk and transformed anew."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], *, size: int):
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = train_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.open(self.paths[index]).convert("RGB")
        return self.transform(image), self.labels[index]


def training_setup(
    model: nn.Module, paths: Sequence[Path], labels: Sequence[int], *, size: int, batch_size: int, lr: float = 1e-3
) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    """``model`` (the same architecture ours trains), Adam and a shuffling ``DataLoader`` with default settings."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(
        ImageFolderDataset(paths, labels, size=size), batch_size=batch_size, shuffle=True, drop_last=True
    )
    return model, optimizer, loader


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader) -> int:
    """One pass over ``loader`` with the plain loop; returns the number of images trained on."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen = 0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen
