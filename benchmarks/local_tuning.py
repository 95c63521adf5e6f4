"""Local tuning of deploy/samples/seed-random.yaml: wall time, best accuracy, parallel speedup.

Runs `mnist-tuning run` on the sample twice in this process tree, once with
`parallelTrials: 1` (the baseline) and once with `parallelTrials: 2`, each in a fresh
workdir, and prints both wall times, the best trial of each and the speedup of 2 over 1.
On a two-core machine the engine gives each of two parallel trials one thread, so the
speedup measures how much better two single-threaded trainers use the cores than one
two-threaded one.

    .venv/bin/python benchmarks/local_tuning.py [--max-trials N] [--data-dir data]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "deploy" / "samples" / "seed-random.yaml"
sys.path.insert(0, str(REPO / "tests" / "local"))

from local_runs import cli_command, load_status  # noqa: E402  # the tests' own CLI helpers
from mnist_tuning.local.engine import available_cpus  # noqa: E402


def run_once(manifest: dict[str, Any], parallel: int, data_dir: Path, root: Path) -> dict[str, Any]:
    spec = copy.deepcopy(manifest)
    spec["spec"]["budget"]["parallelTrials"] = parallel
    workdir = root / f"parallel-{parallel}"
    command = cli_command(spec, workdir, data_dir, train_limit=None)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"run with parallelTrials={parallel} failed:\n{result.stdout}\n{result.stderr}")
    return {"seconds": seconds, "status": load_status(workdir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument(
        "--max-trials", type=int, help="trials per run (default: the sample's maxTrials)"
    )
    args = parser.parse_args()
    manifest = yaml.safe_load(SAMPLE.read_text())
    budget = manifest["spec"]["budget"]
    if args.max_trials:
        budget["maxTrials"] = args.max_trials
        budget["maxFailedTrials"] = min(budget["maxFailedTrials"], args.max_trials)
    cores = available_cpus()  # what the engine splits between parallel trials
    print(
        f"{SAMPLE.relative_to(REPO)}: {budget['maxTrials']} trials, objective "
        f"{manifest['spec']['objective']['metric']}, {cores} cores"
    )
    runs: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="local-tuning-") as tmp:
        for parallel in (1, 2):
            runs[parallel] = run_once(manifest, parallel, args.data_dir, Path(tmp))
            status = runs[parallel]["status"]
            best = status.get("best") or {}
            print(
                f"parallelTrials={parallel}: wall {runs[parallel]['seconds']:.1f} s, phase "
                f"{status['phase']}, trials {status['progress']}, best accuracy "
                f"{best.get('accuracy', float('nan')):.4f}, best loss "
                f"{best.get('loss', float('nan')):.4f} ({best.get('trial', 'none')})"
            )
    total = sum(run["seconds"] for run in runs.values())
    speedup = runs[1]["seconds"] / runs[2]["seconds"]
    print(f"total wall time {total:.1f} s")
    print(f"speedup of parallelTrials=2 over parallelTrials=1: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
