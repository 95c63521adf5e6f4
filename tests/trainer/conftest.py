from __future__ import annotations

from pathlib import Path

import pytest
from mnist_trainer.prepare import prepare

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The repository's data/ folder, written by `make data` (or here, if it is missing)."""
    root = REPO / "data"
    prepare(root)
    return root
