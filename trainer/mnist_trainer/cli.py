"""`python -m mnist_trainer`: one trial. Exit 0 done, 2 bad arguments, 3 diverged."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mnist_trainer import compiled, config, cpus
from mnist_trainer.config import Hyperparameters, RunSettings
from mnist_trainer.data import MissingDataError, load_digits
from mnist_trainer.early_stop import end_on_sigterm
from mnist_trainer.metrics import MetricsReporter
from mnist_trainer.train import (
    ONE_THREAD_BELOW_BATCH,
    DivergedError,
    EpochResult,
    evaluate,
    step_threads,
    train,
)

EXIT_USAGE = 2
EXIT_DIVERGED = 3


def _interval(low: float, high: float, *, low_open: bool, high_open: bool) -> str:
    """Write a range the mathematical way: (0, 10], [0, 1)."""
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _number(
    kind: Callable[[str], float],
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """Make an argparse type for finite numbers in a range; argparse names the flag."""
    interval = _interval(low, high, low_open=low_open, high_open=high_open)

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{'n integer' if kind is int else ' number'}"
            ) from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is outside {interval}")
        return value

    return parse


def _integer(low: int, high: int) -> Callable[[str], int]:
    """Make an argparse type for integers in [low, high]."""
    check = _number(int, low, high)
    return lambda text: int(check(text))


def _ranged(
    kind: type[float] | type[int],
    low: float,
    high: float,
    default: float,
    *,
    about: str = "",
    low_open: bool = False,
    high_open: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for a numeric flag whose help states the very range it enforces."""
    if kind is int:
        parse: Callable[[str], float] = _integer(int(low), int(high))
    else:
        parse = _number(float, low, high, low_open=low_open, high_open=high_open)
    interval = _interval(low, high, low_open=low_open, high_open=high_open)
    return {"type": parse, "default": default, "help": f"{about}in {interval} (default {default})"}


def _seed(text: str) -> int:
    """Any non-negative integer torch accepts as a seed."""
    return _integer(0, 2**63 - 1)(text)


def build_parser() -> argparse.ArgumentParser:
    """Declare the flags, named as the operator renders them (`--flag=value`)."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist_trainer",
        description="Train a LeNet-style CNN on MNIST and report validation metrics for Katib.",
    )
    hp = parser.add_argument_group("hyperparameters (what a tuning searches)")
    hp.add_argument(
        "--learning-rate",
        **_ranged(
            float,
            config.LEARNING_RATE_EXCLUSIVE_MIN,
            config.LEARNING_RATE_MAX,
            config.DEFAULT_LEARNING_RATE,
            low_open=True,
        ),
    )
    hp.add_argument(
        "--momentum",
        **_ranged(
            float,
            config.MOMENTUM_MIN,
            config.MOMENTUM_EXCLUSIVE_MAX,
            config.DEFAULT_MOMENTUM,
            about="SGD momentum (Adam/AdamW ignore it), ",
            high_open=True,
        ),
    )
    hp.add_argument(
        "--batch-size",
        **_ranged(int, config.BATCH_SIZE_MIN, config.BATCH_SIZE_MAX, config.DEFAULT_BATCH_SIZE),
    )
    hp.add_argument(
        "--epochs", **_ranged(int, config.EPOCHS_MIN, config.EPOCHS_MAX, config.DEFAULT_EPOCHS)
    )
    hp.add_argument(
        "--optimizer",
        choices=config.OPTIMIZERS,
        default=config.DEFAULT_OPTIMIZER,
        help=f"(default {config.DEFAULT_OPTIMIZER})",
    )
    hp.add_argument(
        "--dropout",
        **_ranged(
            float,
            config.DROPOUT_MIN,
            config.DROPOUT_EXCLUSIVE_MAX,
            config.DEFAULT_DROPOUT,
            about="before the last layer, ",
            high_open=True,
        ),
    )
    hp.add_argument(
        "--weight-decay",
        **_ranged(
            float, config.WEIGHT_DECAY_MIN, config.WEIGHT_DECAY_MAX, config.DEFAULT_WEIGHT_DECAY
        ),
    )
    run = parser.add_argument_group("run settings")
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="torchvision MNIST root holding MNIST/raw (default: data)",
    )
    run.add_argument(
        "--metrics-file",
        type=Path,
        default=None,
        help=f"JSON-lines metrics for Katib (default: ${config.METRICS_FILE_ENV}, "
        f"then {config.HYPERTUNE_DEFAULT_METRICS_FILE})",
    )
    run.add_argument(
        "--seed", type=_seed, default=config.DEFAULT_SEED, help="weights and batch order"
    )
    run.add_argument(
        "--threads",
        type=_integer(1, 1024),
        default=None,
        help="CPU threads for torch (default: the CPUs this process may use, "
        "honouring a container CPU limit on cgroup v2 or v1); training steps on "
        f"batches under {ONE_THREAD_BELOW_BATCH} use one, which is faster",
    )
    run.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto uses a GPU when one is present (default: auto)",
    )
    run.add_argument(
        "--kernels",
        choices=compiled.KERNEL_CHOICES,
        default="auto",
        help="the CPU training step: compiled kernels (trainer/kernels) or PyTorch's eager "
        "operators; auto takes the compiled ones on the CPU when they are built (default: auto)",
    )
    run.add_argument(
        "--download",
        action="store_true",
        help="download the official MNIST files into --data-dir if missing (never by default)",
    )
    run.add_argument(
        "--train-limit",
        type=_integer(1, config.TRAIN_SIZE),
        default=config.TRAIN_SIZE,
        help="train on only the first N of the 50,000 training images, for quick checks; "
        "validation always uses all 10,000 held-out images (default: 50000)",
    )
    return parser


def parse(argv: Sequence[str] | None) -> tuple[Hyperparameters, RunSettings]:
    """Read validated settings from the command line; argparse exits 2 on bad values."""
    args = build_parser().parse_args(argv)
    hp = Hyperparameters(
        learning_rate=args.learning_rate,
        momentum=args.momentum,
        batch_size=args.batch_size,
        epochs=args.epochs,
        optimizer=args.optimizer,
        dropout=args.dropout,
        weight_decay=args.weight_decay,
    )
    settings = RunSettings(
        data_dir=args.data_dir,
        metrics_file=args.metrics_file or config.default_metrics_file(),
        seed=args.seed,
        threads=args.threads or cpus.available_cpus(),
        device=args.device,
        kernels=args.kernels,
        download=args.download,
        train_limit=args.train_limit,
    )
    return hp, settings


def pick_device(choice: str) -> torch.device:
    """Choose the GPU when asked for or, with auto, when one is present."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def _fail(message: str, code: int) -> int:
    print(f"mnist_trainer: {message}", file=sys.stderr, flush=True)
    return code


def run(hp: Hyperparameters, settings: RunSettings) -> int:
    """One trial: load, train, report each epoch, then the test accuracy once."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        return _fail("--device=cuda: no GPU is visible to this process", EXIT_USAGE)
    device = pick_device(settings.device)
    try:
        compiled_steps = compiled.use_compiled(settings.kernels, device)
    except compiled.KernelsUnavailableError as exc:
        return _fail(str(exc), EXIT_USAGE)
    torch.set_num_threads(settings.threads)
    try:
        reporter = MetricsReporter(settings.metrics_file)
    except OSError as exc:
        return _fail(f"--metrics-file: cannot write {settings.metrics_file} ({exc})", EXIT_USAGE)
    end_on_sigterm(settings.metrics_file)
    try:
        digits = load_digits(
            settings.data_dir, device, download=settings.download, train_limit=settings.train_limit
        )
    except MissingDataError as exc:
        return _fail(f"--data-dir: {exc}", EXIT_USAGE)
    print(
        f"device={device.type} threads={settings.threads} "
        f"step-threads={step_threads(hp.batch_size, settings.threads, device, compiled_steps)} "
        f"kernels={compiled.describe(compiled_steps)} "
        f"train={len(digits.train)} "
        f"validation={len(digits.validation)} seed={settings.seed} {hp.describe()}",
        flush=True,
    )

    def on_epoch(result: EpochResult) -> None:
        scores = result.validation
        reporter.report(result.epoch, {config.ACCURACY: scores.accuracy, config.LOSS: scores.loss})
        print(
            f"epoch={result.epoch} accuracy={scores.accuracy:.4f} loss={scores.loss:.4f} "
            f"train-loss={result.train_loss:.4f} seconds={result.seconds:.2f}",
            flush=True,
        )

    try:
        model = train(
            hp,
            digits.train,
            digits.validation,
            seed=settings.seed,
            on_epoch=on_epoch,
            compiled=compiled_steps,
        )
    except DivergedError as exc:
        return _fail(str(exc), EXIT_DIVERGED)
    test = evaluate(model, digits.test)
    reporter.report(hp.epochs, {config.TEST_ACCURACY: test.accuracy})
    print(f"{config.TEST_ACCURACY}={test.accuracy:.4f}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and map failures to exit codes without tracebacks for user errors."""
    hp, settings = parse(argv)
    return run(hp, settings)
