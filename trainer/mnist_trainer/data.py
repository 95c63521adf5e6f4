"""MNIST held in memory once, as normalised tensors on the training device.

Every batch is an index slice of a seeded permutation: no per-sample transforms, no
DataLoader workers. Validation is the last 10,000 training images; the test set is
only ever used once, at the end.

The files are torchvision's MNIST layout (`<root>/MNIST/raw`) and are read the way
`torchvision.datasets.MNIST` reads them (a test holds the two equal), but without
importing torchvision: its import pulls in torch._dynamo, about 1.2 s of every trial.
torchvision is loaded only to `--download`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnist_trainer.config import TEST_SIZE, TRAIN_SIZE, VALIDATION_SIZE
from mnist_trainer.prepare import OUTPUTS, idx_header, raw_dir


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
    """Fail with a clear message that says how to get the files when any is missing."""
    missing = [name for name in OUTPUTS if not (raw_dir(data_dir) / name).is_file()]
    if missing:
        raise MissingDataError(
            f"no MNIST digits in {raw_dir(data_dir)} (missing {', '.join(missing)}); "
            "run `make data` and pass --data-dir=data, or add --download to fetch the "
            "official files"
        )


def read_idx(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """One MNIST file as a uint8 tensor of `shape`; a wrong header or size names the file."""
    payload = path.read_bytes()
    header = idx_header(shape)
    if not payload.startswith(header) or len(payload) != len(header) + int(np.prod(shape)):
        raise MissingDataError(
            f"{path} is not the MNIST file expected there (a {'x'.join(map(str, shape))} "
            "idx file); run `make data` again to rewrite it"
        )
    array = np.frombuffer(payload, dtype=np.uint8, offset=len(header)).reshape(shape)
    return torch.from_numpy(array.copy())


def _download(data_dir: Path) -> None:
    """Fetch the official files through torchvision, which checks their MD5 sums."""
    import torchvision  # only here: importing it costs every trial ~1.2 s

    for train in (True, False):
        torchvision.datasets.MNIST(root=data_dir, train=train, download=True)


def _images(data: torch.Tensor) -> torch.Tensor:
    """Bytes to float pixels in [0, 1] with a channel axis."""
    return data.to(torch.float32).div_(255.0).unsqueeze(1)


def load_digits(
    data_dir: Path, device: torch.device, *, download: bool, train_limit: int = TRAIN_SIZE
) -> Digits:
    """Read MNIST once and keep it, normalised, on `device`.

    Normalisation uses the mean and deviation of the training images actually used,
    so nothing of the validation or test images leaks into training.
    """
    if download:
        _download(data_dir)
    check_present(data_dir)
    raw = raw_dir(data_dir)
    pixels = _images(
        read_idx(raw / "train-images-idx3-ubyte", (TRAIN_SIZE + VALIDATION_SIZE, 28, 28))
    )
    labels = read_idx(raw / "train-labels-idx1-ubyte", (TRAIN_SIZE + VALIDATION_SIZE,)).to(
        torch.int64
    )
    test_pixels = _images(read_idx(raw / "t10k-images-idx3-ubyte", (TEST_SIZE, 28, 28)))
    test_labels = read_idx(raw / "t10k-labels-idx1-ubyte", (TEST_SIZE,)).to(torch.int64)
    train_images = pixels[:train_limit]
    mean, std = train_images.mean(), train_images.std()

    def split(images: torch.Tensor, targets: torch.Tensor) -> Split:
        normalised = images.sub(mean).div_(std).contiguous(memory_format=torch.channels_last)
        return Split(normalised.to(device), targets.to(device))

    return Digits(
        train=split(train_images, labels[:train_limit]),
        validation=split(pixels[TRAIN_SIZE:], labels[TRAIN_SIZE:]),
        test=split(test_pixels, test_labels),
    )
