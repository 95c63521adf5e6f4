"""Helpers for the local-engine tests: manifests, the CLI command, the written status."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from mnist_tuning.local.engine import DRAW, STATE, STUDY_FILE

# Training on a slice of the real digits keeps each trial to seconds on two cores.
TRAIN_LIMIT = 3000

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def tuning(name: str, **spec: Any) -> dict[str, Any]:
    """A MnistTuning manifest with a fast default trial (one epoch, big batches)."""
    return {
        "apiVersion": "tuning.mnist.dev/v1alpha1",
        "kind": "MnistTuning",
        "metadata": {"name": name},
        "spec": {
            "algorithm": {"seed": 11},
            "search": {
                "learningRate": {"min": 0.01, "max": 0.1, "scale": "log"},
                "momentum": {"min": 0.5, "max": 0.9},
            },
            "fixed": {"epochs": 1, "batchSize": 128},
            **spec,
        },
    }


def cli_command(
    manifest: dict[str, Any],
    workdir: Path,
    data_dir: Path,
    train_limit: int | None = TRAIN_LIMIT,
) -> list[str]:
    """Write the manifest next to `workdir` and return `mnist-tuning run` on it.

    Trials train on `train_limit` images; None trains on all of them.
    """
    spec_file = workdir.parent / f"{workdir.name}.yaml"
    spec_file.write_text(yaml.safe_dump(manifest))
    command = [
        sys.executable,
        "-m",
        "mnist_tuning.cli",
        "run",
        "-f",
        str(spec_file),
        "--workdir",
        str(workdir),
        "--data-dir",
        str(data_dir),
    ]
    if train_limit is not None:
        command.append(f"--trainer-arg=--train-limit={train_limit}")
    return command


def load_status(workdir: Path) -> dict[str, Any]:
    status: dict[str, Any] = yaml.safe_load((workdir / "status.yaml").read_text())
    return status


Ledger = tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]


def ledger(workdir: Path) -> Ledger:
    """What a run ended with: its counted trials as (draw, parameters), and its status counts.

    Fails when a draw is counted twice.
    """
    status = load_status(workdir)
    study = optuna.load_study(
        study_name=status["experiment"], storage=f"sqlite:///{workdir / STUDY_FILE}"
    )
    counted = sorted((t.user_attrs[DRAW], t.params) for t in study.trials if STATE in t.user_attrs)
    draws = [draw for draw, _ in counted]
    assert len(draws) == len(set(draws)), f"a draw counted twice: {draws}"
    shown = {key: status.get(key) for key in ("phase", "trials", "progress")}
    return counted, shown
