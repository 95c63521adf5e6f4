"""The `run` subcommand: a MnistTuning tuned on this machine, no cluster needed.

Every mistake a person is likely to make (a bad file, no data, no trainer, a workdir of
another spec) ends in one sentence that says what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import optuna
from rich.console import Console

from mnist_tuning.api.cli import checked_tuning
from mnist_tuning.api.expand import expand
from mnist_tuning.local.engine import (
    STATUS_FILE,
    STUDY_FILE,
    Engine,
    EngineError,
    RunInterruptedError,
)
from mnist_tuning.local.plots import save_plots
from mnist_tuning.local.search import UnsupportedSearchError
from mnist_tuning.local.view import LiveView, result_table

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_WORKDIR_ROOT = Path(".mnist-tuning")
DEFAULT_DATA_DIR = Path("data")
# torchvision's MNIST(root) reads these from <root>/MNIST/raw.
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TRAINER_MODULES = ("mnist_trainer", "torch", "torchvision")


def add_arguments_run(parser: argparse.ArgumentParser) -> None:
    """Declare `run`'s flags."""
    parser.add_argument("-f", "--filename", required=True, help="MnistTuning YAML file")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the study, trial outputs, status.yaml and plots go "
        "(default: .mnist-tuning/<name>); run again with the same one to resume",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="directory holding MNIST/raw (made by `make data`; default: data)",
    )
    parser.add_argument(
        "--trainer-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra flag for every trial's trainer, e.g. --trainer-arg=--train-limit=5000 "
        "for a quick look on fewer images (repeatable; local runs only)",
    )


def check_data(data_dir: Path) -> None:
    """Refuse to start trials that would all fail for want of the digits."""
    raw = data_dir / "MNIST" / "raw"
    if not all((raw / name).is_file() for name in RAW_FILES):
        raise EngineError(
            f"no MNIST data in {raw}; run `make data` or pass --data-dir pointing at the "
            "directory that holds MNIST/raw"
        )


def check_trainer() -> None:
    """Refuse to start when this Python cannot run `python -m mnist_trainer`."""
    missing = [name for name in TRAINER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise EngineError(
            f"the trainer is not installed in this Python (missing {', '.join(missing)}); "
            "run `make venv` or `pip install -e '.[trainer]'`"
        )


def run(args: argparse.Namespace) -> int:
    """Tune a MnistTuning locally and print the best trial."""
    console = Console(soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuning = checked_tuning(args.filename)
    if isinstance(tuning, int):
        return tuning
    workdir: Path = args.workdir or DEFAULT_WORKDIR_ROOT / tuning.metadata.name
    experiment = expand(tuning)
    try:
        check_data(args.data_dir)
        check_trainer()
        with LiveView(console) as view:
            engine = Engine(
                tuning,
                experiment,
                workdir=workdir,
                data_dir=args.data_dir.resolve(),
                observer=view,
                extra_args=args.trainer_arg,
            )
            status = engine.run()
    except (EngineError, UnsupportedSearchError) as exc:
        errors.print(f"mnist-tuning run: {exc}", markup=False)
        return EXIT_USAGE
    except RunInterruptedError:
        errors.print(
            f"interrupted; finished trials are kept in {workdir}. Run the same command again "
            "to resume (interrupted trials run again).",
            markup=False,
        )
        return EXIT_INTERRUPTED
    plots = save_plots(engine.records(), experiment, workdir)
    console.print(result_table(status))
    console.print(f"phase {status.phase}, trials {status.progress}", highlight=False)
    console.print(f"status: {workdir / STATUS_FILE}", highlight=False)
    console.print(f"plots:  {', '.join(str(p) for p in plots)}", highlight=False)
    console.print(
        f"study:  optuna-dashboard sqlite:///{(workdir / STUDY_FILE).resolve()}", highlight=False
    )
    return 0 if status.phase == "Succeeded" else EXIT_FAILED
