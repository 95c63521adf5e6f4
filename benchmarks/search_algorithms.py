"""random vs tpe vs random + median early stopping, locally, on one spec measured in one run.

One search (learning rate over a wide log range, momentum), 8 trials of 3 epochs, 2 at a
time, the same seed; each variant runs `mnist-tuning run` in a fresh workdir. Prints each
variant's wall time, best accuracy and trial counts. With 8 trials tpe is still in its 10
random start-up trials (Katib's default too), so it differs from random by its draws only.

    .venv/bin/python benchmarks/search_algorithms.py [--train-limit N] [--data-dir data]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "local"))

from local_runs import cli_command, load_status, tuning  # noqa: E402  # the tests' helpers

VARIANTS: dict[str, dict[str, Any]] = {
    "random": {"algorithm": {"name": "random", "seed": 42}},
    "tpe": {"algorithm": {"name": "tpe", "seed": 42}},
    "random+earlyStopping": {
        "algorithm": {"name": "random", "seed": 42},
        "earlyStopping": {"rule": "median", "minTrials": 2, "startStep": 1},
    },
}


def manifest(name: str, variant: dict[str, Any]) -> dict[str, Any]:
    return tuning(
        name.replace("+", "-").lower(),
        budget={"maxTrials": 8, "parallelTrials": 2, "maxFailedTrials": 8},
        search={
            "learningRate": {"min": 0.00001, "max": 0.3, "scale": "log"},
            "momentum": {"min": 0.5, "max": 0.95},
        },
        fixed={"epochs": 3, "batchSize": 64},
        **variant,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument(
        "--train-limit", type=int, help="images each trial trains on (default: all 50,000)"
    )
    args = parser.parse_args()
    print(f"8 trials x 3 epochs, 2 in parallel, train limit {args.train_limit or 'none'}")
    print(f"{'variant':<22} {'wall s':>8} {'best accuracy':>14}  trials")
    with tempfile.TemporaryDirectory() as root:
        for name, variant in VARIANTS.items():
            workdir = Path(root) / name
            command = cli_command(
                manifest(name, variant), workdir, args.data_dir, train_limit=args.train_limit
            )
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                sys.exit(f"{name} failed:\n{result.stdout}\n{result.stderr}")
            status = load_status(workdir)
            best = status.get("best", {}).get("accuracy", float("nan"))
            counts = {k: v for k, v in status["trials"].items() if v}
            print(f"{name:<22} {seconds:>8.1f} {best:>14.4f}  {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
