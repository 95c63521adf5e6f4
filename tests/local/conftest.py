from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mnist_trainer.prepare import prepare
from runs import RunCli, cli_command

REPO = Path(__file__).resolve().parents[2]
# A slice of the real digits keeps each trial to seconds on two cores.
TRAIN_IMAGES = 4000
TEST_IMAGES = 1000
# (file stem, count, bytes per item, header length)
SLICES = (
    ("train-images-idx3-ubyte", TRAIN_IMAGES, 28 * 28, 16),
    ("train-labels-idx1-ubyte", TRAIN_IMAGES, 1, 8),
    ("t10k-images-idx3-ubyte", TEST_IMAGES, 28 * 28, 16),
    ("t10k-labels-idx1-ubyte", TEST_IMAGES, 1, 8),
)


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first few thousand real MNIST digits, in torchvision's raw layout."""
    full = REPO / "data"
    prepare(full)
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem, count, size, header in SLICES:
        data = (full / "MNIST" / "raw" / stem).read_bytes()
        # idx header: magic, then big-endian item count (then image sizes).
        head = data[:4] + count.to_bytes(4, "big") + data[8:header]
        (raw / stem).write_bytes(head + data[header : header + count * size])
    return root


@pytest.fixture
def run_cli() -> RunCli:
    """Run `mnist-tuning run` as a person would, in a separate process."""

    def run(
        manifest: dict[str, Any], workdir: Path, data_dir: Path
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli_command(manifest, workdir, data_dir),
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )

    return run
