"""Golden Experiments: what `render` prints for each sample, reviewed once and kept.

A change to expand() that alters a rendered Experiment fails here until the golden files are
regenerated and the diff reviewed:

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from mnist_tuning.api.expand import expand
from mnist_tuning.api.spec import parse_tuning
from mnist_tuning.api.yamlio import to_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO_ROOT / "deploy" / "samples").glob("*.yaml"))
GOLDEN = Path(__file__).resolve().parent / "golden"


def rendered(sample: Path) -> str:
    return to_yaml(expand(parse_tuning(yaml.safe_load(sample.read_text()))))


def test_every_sample_has_a_golden_file() -> None:
    assert [p.name for p in SAMPLES] == [
        "bayesianoptimization.yaml",
        "cmaes.yaml",
        "early-stopping.yaml",
        "full.yaml",
        "grid.yaml",
        "multivariate-tpe.yaml",
        "quick.yaml",
        "seed-random.yaml",
        "sobol.yaml",
        "tpe.yaml",
    ]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_renders_its_golden_experiment(sample: Path) -> None:
    golden = GOLDEN / f"{sample.stem}.experiment.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered(sample))
    assert rendered(sample) == golden.read_text()
