"""Hyperparameters of one trial: defaults, accepted ranges, and the validated settings.

The operator's spec models mirror DEFAULTS and the ranges here, so a value the
`MnistTuning` CRD accepts is one this trainer accepts too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

Optimizer = Literal["sgd", "adam", "adamw"]
OPTIMIZERS: Final[tuple[Optimizer, ...]] = ("sgd", "adam", "adamw")

# Used for every hyperparameter a trial does not set (Katib's pytorch-mnist defaults,
# except one epoch so that a trial stays a short job).
DEFAULT_LEARNING_RATE: Final = 0.01
DEFAULT_MOMENTUM: Final = 0.5
DEFAULT_BATCH_SIZE: Final = 64
DEFAULT_EPOCHS: Final = 1
DEFAULT_OPTIMIZER: Final[Optimizer] = "sgd"
DEFAULT_DROPOUT: Final = 0.0
DEFAULT_WEIGHT_DECAY: Final = 0.0
DEFAULT_SEED: Final = 1

# Accepted ranges (inclusive unless the name says otherwise).
LEARNING_RATE_EXCLUSIVE_MIN: Final = 0.0
LEARNING_RATE_MAX: Final = 10.0
MOMENTUM_MIN: Final = 0.0
MOMENTUM_EXCLUSIVE_MAX: Final = 1.0
BATCH_SIZE_MIN: Final = 1
BATCH_SIZE_MAX: Final = 4096
EPOCHS_MIN: Final = 1
EPOCHS_MAX: Final = 100
DROPOUT_MIN: Final = 0.0
DROPOUT_EXCLUSIVE_MAX: Final = 1.0
WEIGHT_DECAY_MIN: Final = 0.0
WEIGHT_DECAY_MAX: Final = 1.0

# MNIST's 60,000 training images: the first 50,000 train, the last 10,000 validate.
TRAIN_SIZE: Final = 50_000
VALIDATION_SIZE: Final = 10_000
# MNIST's separate test set, scored once at the end of a trial.
TEST_SIZE: Final = 10_000

# Where hypertune writes when neither --metrics-file nor the environment says otherwise.
METRICS_FILE_ENV: Final = "CLOUD_ML_HP_METRIC_FILE"
HYPERTUNE_DEFAULT_METRICS_FILE: Final = Path("/tmp/hypertune/output.metrics")

# Metric names, as Katib's objective and additional metrics name them.
ACCURACY: Final = "accuracy"
LOSS: Final = "loss"
TEST_ACCURACY: Final = "test-accuracy"


@dataclass(frozen=True)
class Hyperparameters:
    """What a tuning searches over; printed in full when a run diverges."""

    learning_rate: float = DEFAULT_LEARNING_RATE
    momentum: float = DEFAULT_MOMENTUM
    batch_size: int = DEFAULT_BATCH_SIZE
    epochs: int = DEFAULT_EPOCHS
    optimizer: Optimizer = DEFAULT_OPTIMIZER
    dropout: float = DEFAULT_DROPOUT
    weight_decay: float = DEFAULT_WEIGHT_DECAY

    def describe(self) -> str:
        """One line, flag-shaped, so a person can rerun the trial from it."""
        return (
            f"--learning-rate={self.learning_rate:g} --momentum={self.momentum:g} "
            f"--batch-size={self.batch_size} --epochs={self.epochs} "
            f"--optimizer={self.optimizer} --dropout={self.dropout:g} "
            f"--weight-decay={self.weight_decay:g}"
        )


@dataclass(frozen=True)
class RunSettings:
    """How a trial runs, as opposed to what it tunes."""

    data_dir: Path
    metrics_file: Path
    seed: int = DEFAULT_SEED
    threads: int = 1
    device: str = "auto"
    kernels: str = "auto"
    download: bool = False
    train_limit: int = TRAIN_SIZE


def default_metrics_file() -> Path:
    """Return the path hypertune itself would use: the environment, then its default."""
    configured = os.environ.get(METRICS_FILE_ENV)
    return Path(configured) if configured else HYPERTUNE_DEFAULT_METRICS_FILE
