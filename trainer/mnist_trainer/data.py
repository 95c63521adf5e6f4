"""MNIST held in memory once, as normalised tensors on the training device.

Every batch is an index slice of a seeded permutation: no per-sample transforms, no
DataLoader workers. Validation is the last 10,000 training images; the test set is
only ever used once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from mnist_trainer.config import TRAIN_SIZE, VALIDATION_SIZE
from mnist_trainer.prepare import OUTPUTS, raw_dir


class MissingDataError(Exception):
    """The data directory does not hold MNIST; the message says how to get it."""


@dataclass(frozen=True)
class Split:
    """Images (n, 1, 28, 28) float32, normalised, and labels (n,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        """Count the images."""
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Digits:
    """The three splits a trial uses."""

    train: Split
    validation: Split
    test: Split


def check_present(data_dir: Path) -> None:
    """Fail with a clear message, before torchvision would, when the files are missing."""
    missing = [name for name in OUTPUTS if not (raw_dir(data_dir) / name).is_file()]
    if missing:
        raise MissingDataError(
            f"no MNIST digits in {raw_dir(data_dir)} (missing {', '.join(missing)}); "
            "run `make data` and pass --data-dir=data, or add --download to fetch the "
            "official files"
        )


def _images(data: torch.Tensor) -> torch.Tensor:
    """Bytes to float pixels in [0, 1] with a channel axis."""
    return data.to(torch.float32).div_(255.0).unsqueeze(1)


def load_digits(
    data_dir: Path, device: torch.device, *, download: bool, train_limit: int = TRAIN_SIZE
) -> Digits:
    """Read MNIST with torchvision once and keep it, normalised, on `device`.

    Normalisation uses the mean and deviation of the training images actually used,
    so nothing of the validation or test images leaks into training.
    """
    if not download:
        check_present(data_dir)
    train_set = torchvision.datasets.MNIST(root=data_dir, train=True, download=download)
    test_set = torchvision.datasets.MNIST(root=data_dir, train=False, download=download)
    pixels = _images(train_set.data)
    labels = train_set.targets.to(torch.int64)
    train_images = pixels[:train_limit]
    mean, std = train_images.mean(), train_images.std()
    held_out = TRAIN_SIZE + VALIDATION_SIZE

    def split(images: torch.Tensor, targets: torch.Tensor) -> Split:
        normalised = images.sub(mean).div_(std).contiguous(memory_format=torch.channels_last)
        return Split(normalised.to(device), targets.to(device))

    return Digits(
        train=split(train_images, labels[:train_limit]),
        validation=split(pixels[TRAIN_SIZE:held_out], labels[TRAIN_SIZE:held_out]),
        test=split(_images(test_set.data), test_set.targets.to(torch.int64)),
    )
